"""analysis.plots and analysis.report: figures from real results, reports with notes for gaps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyperf
import pytest
from matplotlib.figure import Figure

from pinning.analysis import plots
from pinning.analysis.formatting import seconds as format_seconds
from pinning.analysis.formatting import simulation_text
from pinning.analysis.report import (
    SIMULATOR_SECTION,
    break_even_table,
    main,
    scaling_fits,
    write_report,
)
from pinning.analysis.results import load_results
from pinning.analysis.summary import summary_frame, summary_table
from pinning.model.names import COUNTERS, InputError

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "quick-sample.json"  # the quick suite on the sim backing
GROUND = DATA / "ground-sample.json"  # kvm and real backings, 1 GiB
CALIBRATED = Path(__file__).resolve().parent.parent / "results" / "calibrated-reference.toml"
CALIBRATED_AFTER = CALIBRATED.with_name("calibrated-reference-after.toml")


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_results(SAMPLE)


def only_families(tmp_path: Path, *families: str) -> Path:
    """A copy of the sample with only the benchmarks of some families."""
    suite = pyperf.BenchmarkSuite.load(str(SAMPLE))
    keep = [b for b in suite.get_benchmarks() if b.get_name().split("/")[0] in families]
    path = tmp_path / f"{'-'.join(families)}.json"
    pyperf.BenchmarkSuite(keep).dump(str(path))
    return path


def as_backing(tmp_path: Path, backing: str, source: Path = SAMPLE) -> Path:
    """A copy of a results file that says it ran on ``backing`` (labels follow it)."""
    data = json.loads(source.read_text())
    data["metadata"]["param.backing"] = backing
    path = tmp_path / f"{source.stem}-{backing}.json"
    path.write_text(json.dumps(data))
    return path


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()]


def figure_words(fig: Figure) -> str:
    """Every title, axis label, legend entry and note of a figure."""
    texts = [fig.get_suptitle()]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.texts]
    return " ".join(texts + legend_texts(fig))


def loglog_k(gib: pd.Series, seconds: pd.Series) -> float:
    """The exponent of seconds ∝ gib^k by least squares on the logs (positive points)."""
    keep = seconds > 0
    return float(np.polyfit(np.log(gib[keep]), np.log(seconds[keep]), 1)[0])


def test_startup_scaling_plot_on_the_sim_is_modelled_only(sample: pd.DataFrame) -> None:
    """The sim's wall time is simulator speed: no measured panel, no fit of it."""
    values = load_results(SAMPLE, values=True)
    fig = plots.plot_startup_scaling(sample, values)
    assert isinstance(fig, Figure)
    (modelled,) = fig.axes
    assert "modelled" in modelled.get_title() and "modelled" in modelled.get_ylabel()
    assert "measured" not in figure_words(fig)
    texts = legend_texts(fig)
    # 2 strategies x 2 levels modelled (demand's startup is 0: legend only), 2 published
    assert sum("k =" in t for t in texts) == 2 + 2
    assert any(t.startswith("published (RFC v2") for t in texts)
    assert any("0 s at every size" in t for t in texts)  # modelled demand startup is 0
    # 2 point sets + 2 fits + 2 legend-only entries + 2 published point sets
    assert len(modelled.lines) == 8
    assert modelled.get_xscale() == "log" and modelled.get_yscale() == "log"


def test_startup_scaling_plot_of_a_real_backing_adds_the_measured_panel(tmp_path: Path
                                                                        ) -> None:
    path = as_backing(tmp_path, "real")
    df, values = load_results(path), load_results(path, values=True)
    fig = plots.plot_startup_scaling(df, values)
    modelled, measured = fig.axes
    assert "modelled" in modelled.get_title()
    assert "measured" in measured.get_title() and "measured" in measured.get_ylabel()
    assert "simulator" not in figure_words(fig)
    texts = legend_texts(fig)
    # measured: 4 fits (bootstrap CI); modelled: 2 fits; published: 2
    assert sum("k =" in t for t in texts) == 4 + 2 + 2
    assert any("[" in t for t in texts if t.startswith("upfront 4k"))  # bootstrap CI


@pytest.mark.parametrize(("fn", "n_axes", "n_lines"), [
    (plots.plot_faults_vs_vcpus, 1, [4]),
    (plots.plot_latency_cdf, 2, [6, 6]),  # 4 CDFs + p50/p99 guides per level
    (plots.plot_pinned_over_time, 2, [4, 4]),
    (plots.plot_metadata_bytes, 1, [3]),
    (plots.plot_break_even, 1, [3]),  # modelled: 2 + crossing line; no simulator speed
])
def test_plots_from_sample(sample: pd.DataFrame, fn, n_axes: int, n_lines: list[int]) -> None:
    fig = fn(sample)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_axes
    assert [len(ax.lines) for ax in fig.axes] == n_lines
    labels = " ".join([ax.get_title() + ax.get_ylabel() for ax in fig.axes])
    assert "modelled" in labels or "measured" in labels


def test_panels_stay_readable_with_many_series(sample: pd.DataFrame) -> None:
    """Full-suite shape: a vCPU sweep of one pattern, other patterns at one vCPU count."""
    storm = sample[sample["family"] == "fault_storm"]
    more = [storm.assign(vcpus=storm["vcpus"] * 8),
            storm[storm["vcpus"] == 4].assign(pattern="zipf"),
            storm[storm["vcpus"] == 4].assign(pattern="hotset", layout="shared")]
    df = pd.concat([sample, *more], ignore_index=True)
    fig = plots.plot_faults_vs_vcpus(df)
    assert len(fig.axes[0].lines) == 4  # the random vCPU sweeps only
    assert all("random" in t for t in legend_texts(fig))
    fig = plots.plot_latency_cdf(df)
    assert [ax.get_title() for ax in fig.axes] == [
        "fault latency CDF, 8GiB 4k, random (modelled)",
        "fault latency CDF, 8GiB 2m, random (modelled)"]
    assert [len(ax.lines) for ax in fig.axes] == [8 + 2, 8 + 2]


def test_lifecycle_bars_on_the_sim_are_the_modelled_split(sample: pd.DataFrame) -> None:
    fig = plots.plot_lifecycle_bars(sample)
    (modelled,) = fig.axes
    assert "modelled" in modelled.get_title()
    assert "measured" not in figure_words(fig)
    n_cats = 3  # 2, 8, 32 GiB with all memory touched (the touch sweep: break-even plot)
    assert len(modelled.patches) == 2 * n_cats * 3  # startup / faults / teardown stacked
    assert {"startup", "faults", "teardown"} <= set(legend_texts(fig))


def test_lifecycle_bars_of_a_real_backing_add_the_measured_total() -> None:
    ground = load_results(GROUND)  # lifecycle on the real backing: 1 GiB at 4k and 2m
    fig = plots.plot_lifecycle_bars(ground)
    modelled, measured = fig.axes
    assert "modelled" in modelled.get_title() and "measured" in measured.get_title()
    assert len(modelled.patches) == 2 * 2 * 3
    assert len(measured.patches) == 2 * 2
    life = ground[ground["family"] == "lifecycle"]
    heights = sorted(p.get_height() for p in measured.patches)
    assert heights == pytest.approx(sorted(life["median_s"]))


def test_break_even_plot_marks_crossing(sample: pd.DataFrame, tmp_path: Path) -> None:
    (modelled,) = plots.plot_break_even(sample).axes
    assert "modelled" in modelled.get_title()
    assert any("break-even" in t.get_text() for t in modelled.texts)
    # the same sweep measured on a real backing gets its own panel beside it
    real = load_results(as_backing(tmp_path, "real"))
    modelled, measured = plots.plot_break_even(real).axes
    assert "measured" in measured.get_title()
    assert any("no crossing" in t.get_text() for t in measured.texts)


@pytest.mark.parametrize("stem", list(plots.PLOTS))
def test_plots_name_missing_data(stem: str) -> None:
    empty = pd.DataFrame({"family": ["teardown"], "name": ["teardown/upfront/8GiB/4k"]})
    with pytest.raises(InputError) as err:
        plots.PLOTS[stem][1](empty)
    assert re.search(r"no \w+ benchmarks|has no|results have no", str(err.value))


def test_style_does_not_leak(sample: pd.DataFrame) -> None:
    import matplotlib as mpl

    before = dict(mpl.rcParams)
    fig = plots.plot_metadata_bytes(sample)
    assert fig.axes[0].title.get_fontsize() == plots.STYLE["axes.titlesize"]
    assert dict(mpl.rcParams) == before


def test_summary_table_of_sim_results_says_simulator_speed(sample: pd.DataFrame) -> None:
    text = summary_table(sample)
    lines = text.splitlines()
    assert lines[0] == "ran on the sim backing (36 benchmarks), cost profile default"
    assert "measured" not in text
    assert any(line.strip().startswith("simulator speed = ") and "not a cost of pinning"
               in line for line in lines[:4])
    for family in ("startup", "fault_storm", "remap", "teardown", "lifecycle"):
        assert family in lines
    # modelled first, then simulator speed, each over its strategies
    head = lines[lines.index("startup") + 1]
    assert head.index("modelled") < head.index("simulator speed")
    row = next(line for line in lines if line.strip().startswith("startup/*/4GiB/4k"))
    assert row.split()[1:] == ["694", "ms", "0", "s", "3.83", "ms", "38.7", "µs"]
    sf = summary_frame(sample)
    assert len(sf) == 18  # 36 benchmarks paired
    assert list(sf.columns[2:]) == ["upfront_modelled_s", "demand_modelled_s",
                                    "upfront_simulator_s", "demand_simulator_s"]
    medians = sample.set_index("name")["median_s"]
    row = sf.set_index("benchmark").loc["startup/*/4GiB/4k"]
    assert row["upfront_simulator_s"] == medians["startup/upfront/4GiB/4k"]


def test_summary_table_of_kvm_and_real_results_says_measured() -> None:
    ground = load_results(GROUND)
    text = summary_table(ground)
    assert text.splitlines()[0].startswith(
        "ran on the real backing (4 benchmarks) and the kvm backing (12)")
    assert "simulator" not in text and "sim backing" not in text
    assert "measured" in text.splitlines()[1]
    sf = summary_frame(ground)
    assert not [c for c in sf.columns if "simulator" in c]
    row = sf.set_index("benchmark").loc["startup/*/1GiB/4k/kvm/1vcpu/sequential"]
    medians = ground.set_index("name")["median_s"]
    assert row["upfront_measured_s"] == medians["startup/upfront/1GiB/4k/kvm/1vcpu/sequential"]


def test_simulate_text_names_the_kind_of_wall_time() -> None:
    res = {"strategy": "demand", "level": "4k", "guest_pages": 256, "vcpus": 1,
           "error": None, **dict.fromkeys(COUNTERS, 0), "cost_profile": "default",
           "modelled_ns": {"startup": 1e6, "total": 1e6}, "elapsed_ns": {"startup": 2e5}}
    sim = simulation_text({**res, "backing": "sim"})
    assert "measured" not in sim
    assert "(simulator speed: not a cost of pinning)" in sim
    for backing in ("real", "kvm"):
        text = simulation_text({**res, "backing": backing, "host": "warm"})
        wall = next(line for line in text.splitlines() if line.startswith("wall time"))
        assert wall.endswith(", warm host (measured)") and "simulator" not in text


def test_format_seconds() -> None:
    assert format_seconds(float("nan")) == "-"
    assert format_seconds(1.5) == "1.5 s"
    assert format_seconds(0.00383) == "3.83 ms"
    assert format_seconds(2.05e-6) == "2.05 µs"
    assert format_seconds(5e-8) == "50 ns"


def test_report_writes_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main([SAMPLE], out) == 0
    printed = capsys.readouterr().out.split()
    written = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "summary.csv"} <= written
    assert {f"{stem}.png" for stem in plots.PLOTS} <= written
    assert sorted(printed) == sorted(str(out / name) for name in written)
    md = (out / "report.md").read_text()
    assert "Not shown" not in md
    for stem in plots.PLOTS:
        assert f"]({stem}.png)" in md
    assert "| family | benchmark |" in md
    page = (out / "report.html").read_text()
    # every plot of the results, and the sensitivity tornado (a model run of its own)
    assert "sensitivity.png" in written and "](sensitivity.png)" in md
    assert page.count("data:image/png;base64,") == len(plots.PLOTS) + 1
    assert not re.search(r'src="(?!data:)', page)  # nothing external
    csv = pd.read_csv(out / "summary.csv")
    assert len(csv) == 36 and "events_startup_pins" in csv


def test_report_with_missing_families_has_notes(tmp_path: Path) -> None:
    startup_only = only_families(tmp_path, "startup")
    written = write_report([startup_only], tmp_path / "r")
    assert "startup_scaling.png" in written
    assert "metadata_bytes.png" in written  # every benchmark counts its metadata
    assert "latency_cdf.png" not in written
    md = written["report.md"].read_text()
    assert "> **Not shown:** Per-fault latency distribution (plot): latency CDF: no " \
           "fault_storm benchmarks in the results" in md
    assert "no lifecycle benchmarks" in md
    assert "no remap benchmarks" in md
    assert "Not shown:</b> " in written["report.html"].read_text()


def test_report_bad_input_propagates(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.json: no such results file"):
        main([tmp_path / "nope.json"], tmp_path / "out")


def md_section(md: str, heading: str) -> str:
    """The text of one '## heading' section of a report.md."""
    return md.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(section: str) -> list[list[str]]:
    """The body rows of the Markdown tables in a section, as lists of cells."""
    rows = [line.strip("|").split(" | ") for line in section.splitlines()
            if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows]


def test_sim_report_leads_with_modelled_and_sets_simulator_speed_apart(tmp_path: Path
                                                                       ) -> None:
    written = write_report([SAMPLE], tmp_path / "r")
    md = written["report.md"].read_text()
    assert md.startswith("# pinbench report: sim backing\n")
    assert "**Ran on the sim backing (36 benchmarks).**" in md
    headings = re.findall(r"^## (.+)$", md, re.MULTILINE)
    assert headings[0] == "Summary" and headings[-1] == SIMULATOR_SECTION
    body = md.split(f"\n## {SIMULATOR_SECTION}\n", 1)[0]
    # before the simulator speed section no table shows a wall time of the sim
    summary = table_rows(md_section(md, "Summary"))
    assert summary[0] == ["family", "benchmark", "upfront modelled", "demand modelled"]
    for section in ("Summary", "Startup time vs guest size", "Lifecycle and break-even"):
        assert "simulator" not in md_section(md, section)
        for row in table_rows(md_section(md, section)):
            assert "measured" not in row, (section, row)
    assert "upfront simulator speed" not in body
    speed = table_rows(md_section(md, SIMULATOR_SECTION))
    assert speed[0] == ["family", "benchmark", "upfront simulator speed",
                        "demand simulator speed"]
    assert ["startup", "startup/*/4GiB/4k", "3.83 ms", "38.7 µs"] in speed
    assert "not the time a kernel takes" in md_section(md, SIMULATOR_SECTION)


def test_sim_fits_and_break_even_come_from_modelled_times(sample: pd.DataFrame) -> None:
    values = load_results(SAMPLE, values=True)
    fits = scaling_fits(sample, values)
    assert set(fits["metric"]) == {"modelled", "published"}
    startup = sample[sample["family"] == "startup"]
    for _, fit in fits[fits["metric"] == "modelled"].iterrows():
        rows = startup[(startup["strategy"] == fit["strategy"])
                       & (startup["level"] == fit["level"])].sort_values("guest_gib")
        modelled = rows["model_measured_ns"].reset_index(drop=True) / 1e9
        if (modelled == 0).all():
            assert fit["k"] == 0  # demand's startup models nothing
            continue
        assert fit["k"] == pytest.approx(loglog_k(rows["guest_gib"].reset_index(drop=True),
                                                  modelled), abs=1e-9)
        wall = loglog_k(rows["guest_gib"].reset_index(drop=True),
                        rows["median_s"].reset_index(drop=True))
        assert fit["k"] != pytest.approx(wall, abs=1e-3)  # not simulator speed's k
    table = break_even_table(sample)
    assert list(table["metric"].unique()) == ["modelled"]
    # the crossing, by hand: linear interpolation of the modelled lifecycle totals
    life = sample[(sample["family"] == "lifecycle") & (sample["guest_gib"] == 8)]
    cost = life.pivot_table(index="touch_fraction", columns="strategy",
                            values="model_total_ns")
    t = cost.index.to_numpy(float)
    diff = (cost["upfront"] - cost["demand"]).to_numpy()
    i = int(np.flatnonzero(np.sign(diff[:-1]) != np.sign(diff[1:]))[0])
    crossing = t[i] + (t[i + 1] - t[i]) * diff[i] / (diff[i] - diff[i + 1])
    assert table["break-even"].iloc[0] == pytest.approx(crossing)


def test_kvm_report_names_its_backings_and_says_measured(tmp_path: Path) -> None:
    written = write_report([GROUND], tmp_path / "r")
    md = written["report.md"].read_text()
    assert md.startswith("# pinbench report: real and kvm backings\n")
    assert "**Ran on the real backing (4 benchmarks) and the kvm backing (12).**" in md
    assert "simulator" not in md.lower() and "sim backing" not in md
    assert "bookkeeping" not in md.split("\n## ", 1)[0]
    summary = table_rows(md_section(md, "Summary"))
    assert summary[0] == ["family", "benchmark", "upfront measured", "demand measured",
                          "upfront modelled", "demand modelled"]


def test_kvm_vs_model_follows_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """The figure's titles name the profile given with --profile, in the report and by
    default in the library (the last profile given, whatever its name sorts as)."""
    from pinning.analysis.ground import kvm_vs_model
    from pinning.model.costs import load_profile

    drawn: list[Figure] = []
    draw = plots.plot_kvm_vs_model
    monkeypatch.setattr(plots, "plot_kvm_vs_model",
                        lambda *a, **k: drawn.append(draw(*a, **k)) or drawn[-1])
    write_report([GROUND], tmp_path / "r", profiles=[CALIBRATED])
    (fig,) = drawn
    titles = [ax.get_title() for ax in fig.axes]
    assert all("calibrated profile" in t and "default" not in t for t in titles), titles

    table = kvm_vs_model(load_results(GROUND), [load_profile(), load_profile(CALIBRATED)])
    titles = [ax.get_title() for ax in draw(table).axes]
    assert all("calibrated profile" in t for t in titles), titles
    with pytest.raises(InputError, match="no profile 'nope'"):
        draw(table, profile="nope")


def test_two_calibrations_of_one_name_are_told_apart(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[Figure] = []
    draw = plots.plot_kvm_vs_model
    monkeypatch.setattr(plots, "plot_kvm_vs_model",
                        lambda *a, **k: drawn.append(draw(*a, **k)) or drawn[-1])
    written = write_report([GROUND], tmp_path / "r", profiles=[CALIBRATED, CALIBRATED_AFTER])
    md = written["report.md"].read_text()
    published = md_section(md, "Model against published boot times")
    for label in ("default", "calibrated (calibrated-reference.toml)",
                  "calibrated (calibrated-reference-after.toml)"):
        assert f"| upfront | upfront | {label} |" in published, label
    after = "calibrated (calibrated-reference-after.toml) profile"
    assert f"Under the {after}, warm host" in md
    assert all(after in ax.get_title() for ax in drawn[0].axes)


def test_report_sets_the_sensitivity_of_the_lifecycle_sweep(tmp_path: Path) -> None:
    """The tornado section: the sweep's configuration at 1 GiB under the profile, every
    assumption of the profile varied, rows as sensitivity() gives them."""
    from pinning.analysis.answer import Lifecycles, sensitivity, varied_costs
    from pinning.analysis.report import SENSITIVITY_GIB
    from pinning.model.config import BenchConfig
    from pinning.model.costs import load_profile

    write_report([SAMPLE], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    section = md.split("## How sure: sensitivity of the answer", 1)[1].split("\n## ", 1)[0]
    sweep = load_results(SAMPLE)
    sweep = sweep[(sweep["family"] == "lifecycle") & (sweep["touch_fraction"] < 1)]
    fractions = sorted(sweep["touch_fraction"].unique())
    row = sweep[sweep["touch_fraction"] == fractions[len(fractions) // 2]].iloc[0]
    names = [s for s in ("upfront", "demand", "demand-v2") if s in set(sweep["strategy"])]
    config = BenchConfig("lifecycle", names[0], SENSITIVITY_GIB << 30, row["level"],
                         vcpus=int(row["vcpus"]), pattern=row["pattern"],
                         touch_fraction=float(row["touch_fraction"]))
    profile = load_profile()
    frame, summary = sensitivity(Lifecycles(config, profile), names, varied_costs(profile))
    assert f"base {summary['ratio']:.3g}" in section
    for _, r in frame.iterrows():
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {r['key']} |"))
        assert f"| {r['ratio_low']:.4g} |" in line or f"| {round(r['ratio_low'], 4)} |" in line
        assert ("FLIPS" in line) == bool(r["flips"])
    assert "](sensitivity.png)" in section

    startup_only = only_families(tmp_path, "startup")
    write_report([startup_only], tmp_path / "s")
    assert "No lifecycle touch sweep" in (tmp_path / "s" / "report.md").read_text()
