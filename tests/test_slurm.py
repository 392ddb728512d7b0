"""Runs on a real Slurm cluster (slurmctld, a slurmd on each simulated lab host, a shared folder):
the same job.yaml as on the lab, only the inventory differs."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import PROBE, ROOT, launch, read_until, run_id_of, start_launcher

pytestmark = pytest.mark.integration

ALLREDUCE = ROOT / "jobs/allreduce/train.py"
BOOK = ROOT / "jobs/book"


def slurm_job(tmp_path: Path, slurm, script: Path, args: list[str], runtime: str = "host", extra: str = "",
              image: str | None = None, nodes: int = 2) -> Path:
    """A job of `nodes` nodes x 2 processes running `script`, on the Slurm inventory (runtime: host runs
    this machine's python, which the lab's hosts share)."""
    workdir = tmp_path / "job"
    workdir.mkdir(exist_ok=True)
    shutil.copy(script, workdir / script.name)
    slurm.inventory(tmp_path / "cluster.yaml", python=sys.executable)
    lines = [f"name: slurm-{script.stem}", f"cluster: {tmp_path / 'cluster.yaml'}", f"nodes: {nodes}", "nproc_per_node: 2",
             f"command: {json.dumps(['python', script.name, *args])}", "env: {OMP_NUM_THREADS: '1'}", f"runtime: {runtime}",
             "timeout: 4m"]
    if image:
        lines.append(f"image: {{base: '{image}'}}")
    (workdir / "job.yaml").write_text("\n".join(lines) + "\n" + extra)
    return workdir / "job.yaml"


def summary_of(tmp_path: Path, run_id: str) -> dict:
    return json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())


def wait_for(done, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not done():
        assert time.monotonic() < deadline, f"waited {limit_s:g} s for {what}"
        time.sleep(0.5)


def ranks_left(run_id: str) -> list[int]:
    """Processes of the run on any node (the simulated hosts share this machine's process table)."""
    import simlab

    return simlab.processes_of_run(run_id)


def test_a_docker_job_runs_on_two_nodes_with_right_results_logs_and_summary(tmp_path: Path, slurm, base_image: str) -> None:
    job = slurm_job(tmp_path, slurm, ALLREDUCE, ["--steps", "10"], runtime="docker", image=base_image)
    dry = launch(str(job), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --nodes=2" in dry.stdout and "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1" in dry.stdout
    assert not slurm.squeue(), "a dry run submits nothing"

    result = launch(str(job), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    assert "launch: submitted Slurm job" in result.stderr
    for node, ranks in (("node0", (0, 1)), ("node1", (2, 3))):
        for rank in ranks:
            assert f"[{node}/{rank}] allreduce: rank {rank} of 4: sum 10 (expected 10) OK" in result.stdout
            log = (tmp_path / "runs" / run_id / "logs" / node / f"rank{rank}.log").read_text()
            assert f"allreduce: rank {rank} of 4: sum 10 (expected 10) OK" in log
    summary = summary_of(tmp_path, run_id)
    assert summary["status"] == "succeeded" and summary["slurm_job_id"].isdigit()
    assert len(summary["slurm_nodes"]) == 2 and set(summary["slurm_nodes"]) <= {"h1", "h2", "h3"}
    assert "queued" in summary["phases_s"]
    script = (tmp_path / "runs" / run_id / "job.sbatch").read_text()
    assert script.startswith("#!/bin/bash") and "docker load --quiet --input" in script
    assert not slurm.squeue() and not ranks_left(run_id)


def test_a_detached_job_is_followed_and_its_status_outlives_slurms_memory(tmp_path: Path, slurm) -> None:
    job = slurm_job(tmp_path, slurm, ALLREDUCE, ["--steps", "10"])
    started = launch(str(job), "--detach", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("launch: run ", 1)[1].split()[0]
    followed = launch("logs", run_id, "--follow", cwd=tmp_path, timeout=180)
    assert followed.returncode == 0, followed.stderr
    assert "[node1/3] allreduce: rank 3 of 4: sum 10 (expected 10) OK" in followed.stdout
    job_id = json.loads((tmp_path / "runs" / run_id / "handle.json").read_text())["job_id"]
    # Slurm forgets the job MinJobAge after its end (no accounting here): the run's own records answer
    wait_for(lambda: slurm.run("scontrol", "show", "job", job_id, check=False).returncode != 0, 120, "scontrol to forget the job")
    status = launch("status", run_id, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "succeeded" in status.stdout and "unknown" not in status.stdout
    assert summary_of(tmp_path, run_id)["status"] == "succeeded"


def test_a_failing_rank_fails_the_job_fast_and_is_named(tmp_path: Path, slurm) -> None:
    job = slurm_job(tmp_path, slurm, ALLREDUCE, ["--steps", "200", "--sleep", "0.2", "--fail-rank", "3", "--fail-step", "5"])
    began = time.monotonic()
    result = launch(str(job), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - began < 90, "the other ranks are stopped, not waited for"
    assert "first failure: rank 3 on node1, exit code 3" in result.stdout
    assert not slurm.squeue() and not ranks_left(run_id_of(result.stdout))


def test_ctrl_c_cancels_the_job_and_leaves_nothing(tmp_path: Path, slurm) -> None:
    job = slurm_job(tmp_path, slurm, PROBE, ["--steps", "2000", "--sleep", "0.1"])
    proc = start_launcher(job, tmp_path)
    lines = read_until(proc, lambda seen: any("[node1/" in line for line in seen))
    run_id = run_id_of("".join(lines))
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "SIGINT received" in out
    assert not slurm.squeue() and not ranks_left(run_id)


def test_a_killed_launcher_ends_its_job_and_a_detached_one_is_stopped(tmp_path: Path, slurm) -> None:
    job = slurm_job(tmp_path, slurm, PROBE, ["--steps", "2000", "--sleep", "0.1"])
    proc = start_launcher(job, tmp_path)
    lines = read_until(proc, lambda seen: any("[node1/" in line for line in seen))
    run_id = run_id_of("".join(lines))
    killed = time.monotonic()
    proc.kill()  # SIGKILL: nobody renews the nodes' lease
    proc.communicate()
    wait_for(lambda: not slurm.squeue(), 60, "the job of a killed launcher to end")
    assert time.monotonic() - killed < 60
    wait_for(lambda: not ranks_left(run_id), 30, "the killed launcher's ranks to end")

    detached = launch(str(job), "--detach", cwd=tmp_path / "job")
    assert detached.returncode == 0, detached.stderr
    run_id = detached.stdout.split("launch: run ", 1)[1].split()[0]
    wait_for(lambda: (tmp_path / "job" / "runs").exists() and ranks_left(run_id), 60, "the detached job's ranks")
    stopped = launch("stop", run_id, cwd=tmp_path / "job", timeout=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not slurm.squeue() and not ranks_left(run_id)


def test_a_restart_resumes_from_the_checkpoint(tmp_path: Path, slurm) -> None:
    job = slurm_job(tmp_path, slurm, PROBE, ["--steps", "6", "--sleep", "0.2", "--checkpoint", "--fail-rank", "1",
                                             "--fail-step", "3", "--fail-once"], extra="max_restarts: 1\n")
    result = launch(str(job), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    assert "resumed from step" in result.stdout
    assert (tmp_path / "runs" / run_id / "logs" / "node0" / "rank1.attempt0.log").exists()
    assert summary_of(tmp_path, run_id)["restarts"] == 1


def test_a_job_slurm_requeues_is_followed_into_its_next_attempt(tmp_path: Path, slurm) -> None:
    job = slurm_job(tmp_path, slurm, PROBE, ["--steps", "40", "--sleep", "0.25", "--checkpoint"], extra="max_restarts: 1\n")
    proc = start_launcher(job, tmp_path)
    lines = read_until(proc, lambda seen: any("[node1/3] step 5" in line for line in seen))
    run_id = run_id_of("".join(lines))
    job_id = json.loads((tmp_path / "runs" / run_id / "handle.json").read_text())["job_id"]
    slurm.run("scontrol", "requeue", job_id)  # as a preemption with PreemptMode=REQUEUE does
    out, _ = proc.communicate(timeout=180)
    out = "".join(lines) + out
    assert proc.returncode == 0, out[-3000:]
    assert "the scheduler requeued the run" in out and "attempt 2 of 2" in out
    assert "resumed from step" in out
    logs = tmp_path / "runs" / run_id / "logs" / "node1"
    assert "step 5" in (logs / "rank3.attempt0.log").read_text() and "resumed from step" in (logs / "rank3.log").read_text()
    assert summary_of(tmp_path, run_id)["restarts"] == 1
    assert not slurm.squeue() and not ranks_left(run_id)


def test_the_time_limits_warning_reaches_the_ranks_and_the_book_jobs_checkpoint_is_saved(tmp_path: Path, slurm) -> None:
    """timeout: 3m gives --time=3:00 and --signal=B:USR2@60. Slurm sends that warning up to a minute
    early (so not before the ranks train, here), and the test does not wait for it: it sends the same
    signal to the batch shell, as Slurm does, once the ranks train. The book's recipe (the reference
    job's) saves a checkpoint on it and ends."""
    job = slurm_job(tmp_path, slurm, BOOK / "transformer_lm.py", ["--corpus-mb", "0.2", "--epochs", "1000", "--batch-size", "8"])
    shutil.copy(BOOK / "recipe.py", job.parent / "recipe.py")
    job.write_text(job.read_text().replace("timeout: 4m", "timeout: 3m"))
    proc = start_launcher(job, tmp_path)
    lines = read_until(proc, lambda seen: any(line.startswith("[node0/0] checkpoints: none") for line in seen))
    run_id = run_id_of("".join(lines))
    script = (tmp_path / "runs" / run_id / "job.sbatch").read_text()
    assert "#SBATCH --time=3:00" in script and "#SBATCH --signal=B:USR2@60" in script
    job_id = json.loads((tmp_path / "runs" / run_id / "handle.json").read_text())["job_id"]
    slurm.run("scancel", "--batch", "--signal=USR2", job_id, check=False)  # what Slurm does at the time limit's warning
    out, _ = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert "the scheduler's time limit or a preemption is near" in out, out[-3000:]
    assert "stopping at step" in out and "the checkpoint is saved" in out, out[-3000:]
    # LAUNCH_CHECKPOINT_DIR is in the shared folder, where the next run finds it on whatever nodes it gets
    checkpoints = list(Path(slurm.shared_dir).rglob(f"jobs/*/runs/node0/{run_id}/checkpoints/*"))
    assert checkpoints, f"no checkpoint on disk: {out[-2000:]}"
    assert not slurm.squeue() and not ranks_left(run_id)


def test_a_login_host_over_ssh_submits_follows_and_collects(tmp_path: Path, slurm, lab) -> None:
    """login: a host reached over SSH (the lab's h3, with the ssh: block of the lab's inventory): the
    launcher runs Slurm's commands there and reaches the shared folder through it."""
    job = slurm_job(tmp_path, slurm, ALLREDUCE, ["--steps", "5"])
    ssh = yaml.safe_load(lab.cluster_file.read_text())["ssh"]
    inventory = yaml.safe_load((tmp_path / "cluster.yaml").read_text())
    inventory["slurm"]["login"] = lab.host("h3").address
    inventory["ssh"] = ssh
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(inventory))
    check = launch("check", str(tmp_path / "cluster.yaml"), cwd=tmp_path, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"on login host {lab.host('h3').address}" in check.stdout
    result = launch(str(job), cwd=tmp_path, env={"SLURM_CONF": "/nonexistent"})  # nothing of Slurm's here is used
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    assert "[node1/3] allreduce: rank 3 of 4: sum 10 (expected 10) OK" in result.stdout
    assert "allreduce: rank 2 of 4" in (tmp_path / "runs" / run_id / "logs" / "node1" / "rank2.log").read_text()
    assert not slurm.squeue()


@pytest.mark.last
def test_a_node_cut_off_mid_run_fails_the_run_naming_it(tmp_path: Path, slurm) -> None:
    job = slurm_job(tmp_path, slurm, PROBE, ["--steps", "2000", "--sleep", "0.1"])
    proc = start_launcher(job, tmp_path)
    lines = read_until(proc, lambda seen: any("[node1/" in line for line in seen))
    run_id = run_id_of("".join(lines))
    allocation = json.loads(next((slurm.shared_dir).rglob(f"runs/{run_id}/allocation.json")).read_text())
    second = allocation["nodes"].split()[1]
    slurm.cut_node(second)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        slurm.restore_node(second)
    assert proc.returncode == 1, out
    assert "node1 was lost" in out, out[-2000:]
    assert summary_of(tmp_path, run_id)["status"] == "failed"
    wait_for(lambda: not ranks_left(run_id), 90, "the cut-off node's ranks to end")
