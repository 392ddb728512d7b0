"""The reference job (ResNet-18, CIFAR-10 shape) trains under the launcher and reports metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, launch, run_id_of

pytestmark = pytest.mark.integration


def test_resnet18_learns_on_fake_cifar(tmp_path: Path) -> None:
    # A copy of the job with a small FakeData set and several epochs: the model must memorise it.
    job = (ROOT / "jobs/resnet18-cifar10/job.yaml").read_text()
    job = re.sub(r"^command: .*$", 'command: [python, train.py, --epochs, "6", --batch-size, "32", --fake-size, "256"]', job, flags=re.M)
    job = job.replace("cluster: ../../cluster.yaml", f"workdir: {ROOT / 'jobs/resnet18-cifar10'}")
    job = job.replace("requirements: requirements.txt", f"requirements: {ROOT / 'jobs/resnet18-cifar10/requirements.txt'}")
    job_path = tmp_path / "job.yaml"
    job_path.write_text(job)
    result = launch(str(job_path), "--local", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, env={"CIFAR10_DIR": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FakeData with CIFAR-10's shape, 256 images" in result.stdout
    epochs = [(float(loss), float(acc)) for loss, acc in re.findall(r"epoch \d+: loss ([\d.]+), accuracy ([\d.]+)", result.stdout)]
    assert len(epochs) == 6
    assert epochs[-1][0] < 0.7 * epochs[0][0], epochs
    assert epochs[-1][1] > 0.4, epochs
    summary = json.loads((tmp_path / "runs" / run_id_of(result.stdout) / "summary.json").read_text())
    world = summary["world_size"]
    assert summary["status"] == "succeeded" and world >= 1
    steps_per_epoch = 256 // (32 * world)
    assert all(r["steps"] + r["warmup_steps_excluded"] == 6 * steps_per_epoch and r["samples_per_s"] > 0 for r in summary["ranks"])
    assert all(r["warmup_steps_excluded"] == 3 for r in summary["ranks"])
    record = json.loads((tmp_path / "runs" / summary["run_id"] / "metrics/rank0.jsonl").read_text().splitlines()[0])
    assert record["samples"] == 32 and record["step_time_s"] > 0 and "loss" in record
