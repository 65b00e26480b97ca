"""guest_memfd through the whole pipeline: suites with gmem run, load, and the report's
boot and conversion tables and the kvm comparison show it beside the pinning strategies."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest

from pinning.analysis.ground import kvm_ranking, kvm_vs_model
from pinning.analysis.report import _convert_table, boot_table, write_report
from pinning.analysis.results import load_results
from pinning.backends.kvm import gmem_unavailable
from pinning.harness.runner import run_suite
from pinning.harness.suite import load_suite
from pinning.model.costs import load_profile
from pinning.model.units import PAGE_SIZE
from pinning.model.workloads import ACCEPT_UNIT_PAGES, PSC_ENTRIES

SIM_SUITE = """
[suite]
name = "gmem-sim"
description = "guest_memfd beside the pinning strategies, tiny"
processes = 1
values = 1
warmups = 0

[[benchmark]]
workload = "boot"
strategy = ["upfront", "demand", "gmem"]
guest_size = "512MiB"

[[benchmark]]
workload = "boot"
strategy = "gmem"
guest_size = "512MiB"
acceptance = "eager"

[[benchmark]]
workload = "convert"
strategy = ["upfront", "gmem"]
guest_size = "64MiB"
convert_fraction = 0.25
"""
BOOT_PAGES = (512 << 20) // PAGE_SIZE
CONVERTED = int(0.25 * (64 << 20) // PAGE_SIZE)


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    tmp = tmp_path_factory.mktemp("gmem")
    (tmp / "s.toml").write_text(SIM_SUITE)
    out = tmp / "r.json"
    report = run_suite(load_suite(str(tmp / "s.toml")), out, stream=io.StringIO())
    assert report.failed == [] and report.skipped == [] and len(report.done) == 6
    return load_results(out), out


def test_boot_table_sets_gmem_lazy_and_eager_beside_the_pinning_strategies(sim_results):
    df, _ = sim_results
    table = boot_table(df)
    rows = {(r["strategy"], r["acceptance"]): r for _, r in table.iterrows()}
    assert set(rows) == {("upfront", "-"), ("demand", "-"), ("gmem", "lazy"),
                         ("gmem", "eager")}
    eager, lazy = rows[("gmem", "eager")], rows[("gmem", "lazy")]
    # eager: every page accepted (faulted in) at boot, in requests of PSC_ENTRIES units
    assert eager["faults"] == BOOT_PAGES
    assert eager["exits (acceptance)"] == math.ceil(BOOT_PAGES / ACCEPT_UNIT_PAGES / PSC_ENTRIES)
    # lazy: whole 2 MiB units around what the boot touches, one request per unit
    assert lazy["faults"] == ACCEPT_UNIT_PAGES * lazy["exits (acceptance)"] < BOOT_PAGES
    assert rows[("demand", "-")]["faults"] <= lazy["faults"]
    assert rows[("gmem", "lazy")]["pins"] == rows[("gmem", "eager")]["pins"] == 0
    assert rows[("upfront", "-")]["pins"] == BOOT_PAGES
    assert rows[("upfront", "-")]["RMPUPDATEs"] == 0 < lazy["RMPUPDATEs"]


def test_conversion_table_counts_gmems_punch_and_refault_and_only_exits_elsewhere(
        sim_results):
    df, _ = sim_results
    table = _convert_table(df).set_index("benchmark")
    gmem = table.loc[next(n for n in table.index if "/gmem/" in n)]
    upfront = table.loc[next(n for n in table.index if "/upfront/" in n)]
    assert gmem["exits (requests)"] == upfront["exits (requests)"] == 2
    assert gmem["attributes stored"] == 2 * CONVERTED
    # freed guest-owned pages (RMPUPDATE + CLFLUSH), then each made the guest's again
    assert gmem["RMPUPDATEs"] == 2 * CONVERTED
    assert gmem["CLFLUSH bytes"] == CONVERTED * PAGE_SIZE
    assert gmem["re-faults"] == gmem["pages zeroed"] == CONVERTED
    assert (upfront[["attributes stored", "RMPUPDATEs", "CLFLUSH bytes", "re-faults",
                     "pins", "WBINVD"]] == 0).all()


def test_report_has_the_boot_and_conversion_sections_with_gmem(sim_results, tmp_path):
    _, path = sim_results
    written = write_report([path], tmp_path / "rep")
    text = written["report.md"].read_text()
    boot = text[text.index("## Guest boot"):text.index("## Lifecycle and break-even")]
    assert "gmem" in boot and "eager" in boot and "lazy" in boot
    conv = text[text.index("## Conversion"):]
    assert "convert/gmem/64GiB" not in conv and "convert/gmem/64MiB" in conv


KVM_SUITE = """
[suite]
name = "gmem-kvm"
description = "guest_memfd on the real KVM guest, tiny"
processes = 1
values = 1
warmups = 0

[[benchmark]]
workload = ["startup", "fault_storm"]
backing = "kvm"
strategy = ["demand", "gmem"]
guest_size = "64MiB"
mmu = "shadow"

[[benchmark]]
workload = ["startup", "fault_storm"]
backing = "kvm"
strategy = "gmem"
prefault = "fallocate"
guest_size = "64MiB"
mmu = "shadow"

[[benchmark]]
workload = "convert"
backing = "kvm"
strategy = "gmem"
convert_fraction = 0.25
guest_size = "64MiB"
mmu = "shadow"
"""


def test_kvm_comparison_keeps_gmems_prefault_apart_and_prices_no_snp_work(tmp_path):
    reason = gmem_unavailable("fallocate")
    if reason:
        pytest.skip(reason)
    (tmp_path / "k.toml").write_text(KVM_SUITE)
    out = tmp_path / "k.json"
    report = run_suite(load_suite(str(tmp_path / "k.toml")), out, stream=io.StringIO())
    assert report.failed == [] and len(report.done) == 7
    table = kvm_vs_model(load_results(out), [load_profile()])
    gmem = table[table["strategy"] == "gmem"]
    assert set(zip(gmem["phase"], gmem["prefault"], strict=True)) == {
        ("startup", "none"), ("touch all", "none"), ("startup", "fallocate"),
        ("touch all", "fallocate"), ("convert", "none")}
    touch = gmem[(gmem["phase"] == "touch all") & (gmem["prefault"] == "none")].iloc[0]
    # this plain guest has no RMP: the executed model leaves the RMPUPDATEs out, an SNP
    # host pays them
    assert 0 < touch["modelled_s"] < touch["modelled_sev_s"]
    assert (gmem["measured_s"] > 0).all()
    ranking = kvm_ranking(table)
    assert {"gmem_measured_ns_per_page", "gmem (fallocate)_measured_ns_per_page",
            "demand_measured_ns_per_page"} <= set(ranking.columns)


@pytest.mark.parametrize(("changes", "needle"), [
    ({"strategy": "gmem", "backing": "real"}, "backing 'real' has no guest_memfd"),
    ({"strategy": "demand", "backing": "real", "workload": "convert"},
     "does not run the convert family"),
    ({"strategy": "gmem", "memlock_limit": 1 << 30}, "memlock_limit does not apply"),
    ({"strategy": "gmem", "level": "2m"}, "maps 4k only"),
    ({"strategy": "upfront", "prefault": "fallocate"}, "prefault applies to guest_memfd"),
    ({"strategy": "demand", "acceptance": "eager"}, "acceptance applies to guest_memfd"),
    ({"strategy": "gmem", "image_size": 1000}, "image_size 1000 must be a multiple of 4KiB"),
])
def test_what_gmem_cannot_run_is_one_line(changes, needle):
    from dataclasses import replace

    from pinning.harness.backings import validate
    from pinning.model.config import BenchConfig
    from pinning.model.names import InputError

    config = replace(BenchConfig("lifecycle", guest_size=1 << 30), **changes)
    with pytest.raises(InputError) as err:
        validate(config)
    assert needle in str(err.value) and "\n" not in str(err.value)
