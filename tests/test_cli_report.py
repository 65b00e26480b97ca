"""``pinbench report`` from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinning.cli import main

SAMPLE = Path(__file__).parent / "data" / "quick-sample.json"


def test_report_writes_files_and_prints_their_paths(capsys, tmp_path):
    code = main(["report", str(SAMPLE), "-o", str(tmp_path / "rep")])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = [Path(line) for line in out.strip().splitlines()]
    names = {p.name for p in printed}
    assert {"report.md", "report.html", "summary.csv", "startup_scaling.png"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in printed)
    assert "data:image/png;base64," in (tmp_path / "rep" / "report.html").read_text()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such results file"),
        ('{"benchmarks": [', "truncated JSON"),
        ("[1, 2, 3]", "not a pyperf results file"),
        ("hello", "not JSON"),
    ],
)
def test_bad_results_file_is_one_line_exit_2(capsys, tmp_path, content, needle):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    code = main(["report", str(path), "-o", str(tmp_path / "rep")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err and str(path) in err
    assert not (tmp_path / "rep" / "report.md").exists()


def test_report_header_names_the_backing_that_ran(capsys, tmp_path):
    """sim results: simulator speed in its own section; kvm/real results: measured."""
    assert main(["report", str(SAMPLE), "-o", str(tmp_path / "sim")]) == 0
    sim = (tmp_path / "sim" / "report.md").read_text()
    assert sim.splitlines()[0] == "# pinbench report: sim backing"
    assert "\n## Simulator speed: pinbench's own bookkeeping, not a cost of pinning\n" in sim
    assert "wall time of the model's bookkeeping" not in sim

    ground = Path(__file__).parent / "data" / "ground-sample.json"
    profile = Path(__file__).resolve().parent.parent / "results" / "calibrated-reference.toml"
    assert main(["report", str(ground), "--profile", str(profile),
                 "-o", str(tmp_path / "kvm")]) == 0
    capsys.readouterr()
    kvm = (tmp_path / "kvm" / "report.md").read_text()
    assert kvm.splitlines()[0] == "# pinbench report: real and kvm backings"
    assert "**measured** = median wall time of real memory or a real KVM guest" in kvm
    assert "sim backing" not in kvm and "Simulator speed" not in kvm
    html = (tmp_path / "kvm" / "report.html").read_text()
    assert "<h1>pinbench report: real and kvm backings</h1>" in html
