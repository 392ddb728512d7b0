"""Sweeps across node counts on the simulated lab, and `launch report` over their runs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from conftest import ROOT, launch
from test_multinode import lab_job

pytestmark = pytest.mark.integration


def test_sweep_over_one_two_three_hosts_and_report_reproduces_it(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, ROOT / "jobs/allreduce/train.py", ["--steps", "30"], extra="scaling: [1, 2, 3]\n")
    result = launch(str(job), "--sweep", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    (sweep,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("lab-train-sweep-")]
    rows = json.loads((sweep / "scaling.json").read_text())
    assert [(r["nodes"], r["world_size"]) for r in rows] == [(1, 1), (2, 2), (3, 3)]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    summaries = {json.loads((r / "summary.json").read_text())["nodes"]: json.loads((r / "summary.json").read_text()) for r in runs}
    assert sorted(summaries) == [1, 2, 3]
    base = summaries[1]["throughput_samples_per_s"]
    for row in rows:
        throughput = summaries[row["nodes"]]["throughput_samples_per_s"]
        assert row["throughput_samples_per_s"] == pytest.approx(throughput, abs=1e-3)
        assert row["speedup"] == pytest.approx(throughput / base, rel=1e-3)
        assert row["efficiency"] == pytest.approx(throughput / (row["nodes"] * base), rel=1e-3)
    table = (sweep / "scaling.md").read_text()
    assert "| 1 | 1 |" in table and "| 3 | 3 |" in table and "100.0%" in table
    image = matplotlib.image.imread(sweep / "scaling.png")
    assert image.shape[:2] == (400, 1000)
    assert image[..., :3].std() > 0.05, "the plot is not blank"

    report_dir = tmp_path / "report"
    report = launch("report", *map(str, runs), "--out", str(report_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (report_dir / "scaling.md").read_text() == table
    assert json.loads((report_dir / "scaling.json").read_text()) == rows
    assert table.strip() in report.stdout
