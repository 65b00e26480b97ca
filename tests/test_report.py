"""analysis.plots and analysis.report: figures from real results, reports with notes for gaps."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyperf
import pytest
from matplotlib.figure import Figure

from pinning.analysis import plots
from pinning.analysis.formatting import seconds as format_seconds
from pinning.analysis.report import main, write_report
from pinning.analysis.results import load_results
from pinning.analysis.summary import summary_frame, summary_table
from pinning.model.names import InputError

SAMPLE = Path(__file__).parent / "data" / "quick-sample.json"


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


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()]


def test_startup_scaling_plot(sample: pd.DataFrame) -> None:
    values = load_results(SAMPLE, values=True)
    fig = plots.plot_startup_scaling(sample, values)
    assert isinstance(fig, Figure)
    measured, modelled = fig.axes
    assert "measured" in measured.get_title() and "modelled" in modelled.get_title()
    texts = legend_texts(fig)
    # 2 strategies x 2 levels per panel, plus the 2 published series
    assert sum("k =" in t for t in texts) == 4 + 2 + 2
    assert any(t.startswith("published (RFC v2") for t in texts)
    assert any("[" in t for t in texts if t.startswith("upfront 4k"))  # bootstrap CI
    assert any("0 s at every size" in t for t in texts)  # modelled demand startup is 0
    # measured: 4 fitted lines (+ error-bar lines); modelled: 2 point sets + 2 fits +
    # 2 legend-only entries + 2 published point sets
    assert len(modelled.lines) == 8
    assert measured.get_xscale() == "log" and modelled.get_yscale() == "log"


@pytest.mark.parametrize(("fn", "n_axes", "n_lines"), [
    (plots.plot_faults_vs_vcpus, 1, [4]),
    (plots.plot_latency_cdf, 2, [6, 6]),  # 4 CDFs + p50/p99 guides per level
    (plots.plot_pinned_over_time, 2, [4, 4]),
    (plots.plot_metadata_bytes, 1, [3]),
    (plots.plot_break_even, 2, [3, 2]),  # modelled: 2 + crossing line; measured: none
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


def test_lifecycle_bars_measured_beside_modelled(sample: pd.DataFrame) -> None:
    fig = plots.plot_lifecycle_bars(sample)
    measured, modelled = fig.axes
    assert "measured" in measured.get_title() and "modelled" in modelled.get_title()
    n_cats = 3  # 2, 8, 32 GiB with all memory touched (the touch sweep: break-even plot)
    assert len(measured.patches) == 2 * n_cats
    assert len(modelled.patches) == 2 * n_cats * 3  # startup / faults / teardown stacked
    assert {"startup", "faults", "teardown"} <= set(legend_texts(fig))


def test_break_even_plot_marks_crossing(sample: pd.DataFrame) -> None:
    fig = plots.plot_break_even(sample)
    modelled, measured = fig.axes
    assert any("break-even" in t.get_text() for t in modelled.texts)
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


def test_summary_table(sample: pd.DataFrame) -> None:
    text = summary_table(sample)
    lines = text.splitlines()
    assert "measured" in lines[0] and "modelled" in lines[0]
    for family in ("startup", "fault_storm", "remap", "teardown", "lifecycle"):
        assert family in lines
    row = next(line for line in lines if line.strip().startswith("startup/*/4GiB/4k"))
    assert row.split()[1:] == ["3.83", "ms", "38.7", "µs", "694", "ms", "0", "s"]
    sf = summary_frame(sample)
    assert len(sf) == 18  # 36 benchmarks paired


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
    assert page.count("data:image/png;base64,") == len(plots.PLOTS)
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
