"""A user's files on the simulated lab: a script written for bare torchrun that saves next to
itself runs in containers and with the hosts' own Python, gets its files back, resumes only when
asked, and its run's own folders go from the hosts only with `launch rm --checkpoints`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, host_runtime_job, lab_job, launch, run_id_of

pytestmark = pytest.mark.integration

SNAPSHOT = ROOT / "tests/jobs/snapshot_job.py"


@pytest.mark.parametrize("runtime", ["docker", "host"])
def test_a_script_that_saves_next_to_itself_runs_on_the_lab(tmp_path: Path, lab, base_image: str, runtime: str) -> None:
    args = ["2", "--out", "result.txt"]
    job = lab_job(tmp_path, lab, base_image, SNAPSHOT, args) if runtime == "docker" else host_runtime_job(tmp_path, lab, SNAPSHOT, args)
    runs = tmp_path / "runs"
    first = launch(str(job), "--nodes", "2", "--runs-dir", str(runs), cwd=tmp_path, timeout=400)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    assert first.stdout.count("starting fresh") == 2 and "[h2/1] epoch 1 done" in first.stdout
    run = runs / run_id_of(first.stdout)
    for host in ("h1", "h2"):
        assert (run / f"outputs/{host}/snapshot.pt").stat().st_size > 0, f"{host}'s snapshot came back"
    assert (run / "outputs/h1/result.txt").read_text() == "trained to epoch 2\n"
    assert not (job.parent / "snapshot.pt").exists() and not (run / "outputs/h1" / SNAPSHOT.name).exists()
    summary = json.loads((run / "summary.json").read_text())
    folder = summary["run_folders"]["h2"]
    assert lab.ssh("h2", f"test -f {folder}/work/snapshot.pt", check=False).returncode == 0, "the host keeps the run's files"

    job.write_text(job.read_text().replace('"2"', '"3"'))
    resumed = launch(str(job), "--nodes", "2", "--runs-dir", str(runs), "--resume", cwd=tmp_path, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert resumed.stdout.count("resuming from epoch 2") == 2 and "[h1/0] epoch 2 done" in resumed.stdout
    code = [row[0] for row in json.loads((runs / run_id_of(resumed.stdout) / "workdir.json").read_text())["files"]]
    assert "snapshot.pt" not in code and "result.txt" not in code

    removed = launch("rm", run.name, "--checkpoints", "--runs-dir", str(runs), cwd=tmp_path)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert f"removed run {run.name}'s checkpoints and outputs on h2: {folder}" in removed.stdout
    assert lab.ssh("h2", f"test -e {folder}", check=False).returncode != 0 and not run.exists()
