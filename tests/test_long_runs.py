"""Long runs on one box: a killed launcher leaves nothing, detached runs, restarts, checkpoints."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, launch, read_until, run_id_of, spawn, start_launcher
from simlab import processes_of_run

pytestmark = pytest.mark.integration

LONG = ["--steps", "6000", "--sleep", "0.1"]  # 10 minutes: ended sooner, something stopped it
STOPS_WITHIN_S = 60  # what the README promises in seconds (a lease of 10 s), with room for a busy machine
LOCKSTEP = ROOT / "tests/jobs/lockstep.py"


def wait_gone(run_id: str, limit_s: float) -> float:
    """Seconds until no process of the run is left; fails after `limit_s`."""
    started = time.monotonic()
    while processes_of_run(run_id):
        assert time.monotonic() - started < limit_s, f"still running after {limit_s} s: {processes_of_run(run_id)}"
        time.sleep(0.2)
    return time.monotonic() - started


def status(run: str, cwd: Path) -> dict:
    result = launch("status", run, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_a_killed_launcher_ends_logs_follow_leaves_no_rank_and_its_logs_come_back(probe_job, tmp_path: Path) -> None:
    job = probe_job(LONG)
    proc = start_launcher(job, tmp_path)
    seen = read_until(proc, lambda lines: sum("] step 3" in line for line in lines) == 2)
    run_id = run_id_of("".join(seen))
    assert processes_of_run(run_id), "the run is going"
    follower = spawn([sys.executable, "-m", "launcher", "logs", run_id, "--follow"], cwd=tmp_path,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    followed = read_until(follower, lambda lines: "[box/0] step 12\n" in lines)  # logged after it started: it follows
    assert "[box/0] step 12\n" in followed and follower.poll() is None, "it follows while the launcher watches the run"
    proc.kill()
    proc.wait()
    out, err = follower.communicate(timeout=60)
    out = "".join(followed) + out
    assert follower.returncode == 1, out[-500:] + err
    assert "launcher stopped watching it" in err and "[box/0] step 2" in out.splitlines()
    lines = [line for line in out.splitlines() if line.startswith("[box/") and line.partition("] ")[2].strip()]
    assert len(lines) == len(set(lines)), "a line printed from the local logs is not printed again from the host"

    wait_gone(run_id, STOPS_WITHIN_S)
    record = json.loads((tmp_path / "runs" / run_id / "logs/box/node.status.json").read_text())
    assert (record["state"], record["cause"]) == ("stopped", "lease")
    deadline = time.monotonic() + 120
    # the lease file ages out, then status says what happened and writes the summary
    while True:
        row = status(run_id, tmp_path)
        if row["status"] != "running" and (tmp_path / "runs" / run_id / "summary.json").exists():
            break
        assert time.monotonic() < deadline, row
        time.sleep(1)
    assert row["status"] == "lost" and row["hosts"] == {"box": "stopped"}
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert summary["status"] == "lost" and "stopped renewing its lease" in summary["reason"]
    follow = launch("logs", run_id, "--follow", cwd=tmp_path, timeout=60)
    assert follow.returncode == 1 and "[box/1] step 3" in follow.stdout.splitlines()


def test_detached_run_status_follow_progress_and_summary(probe_job, tmp_path: Path, monkeypatch) -> None:
    from launcher.run import console, existing

    gate = tmp_path / "go"  # the ranks start their steps once it exists: the run goes on until then
    job = probe_job(["--steps", "25", "--sleep", "0.3"], gate=gate)
    result = launch(str(job), "--detach", cwd=tmp_path, timeout=120)  # returns without waiting for the gated run
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.split()[2]
    assert f"run directory {tmp_path / 'runs' / run_id}" in result.stdout
    assert status(run_id, tmp_path) | {"elapsed_s": 0, "start_time": 0} == {
        "run_id": run_id, "status": "running", "detached": True, "hosts": {"box": "running"},
        "start_time": 0, "elapsed_s": 0, "run_dir": str(tmp_path / "runs" / run_id)}
    follower = spawn([sys.executable, "-m", "launcher", "logs", run_id, "--follow"], cwd=tmp_path,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gate.touch()
    # beside `launch logs --follow`, the same follow in this process says its progress every second (every 30 s for users)
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 1.0)
    followed = existing.open_run(tmp_path / "runs" / run_id)
    notes = io.BytesIO()
    try:
        assert existing.follow(followed, console.Console(io.BytesIO(), notes))["status"] == "succeeded"
    finally:
        followed.close()
    said = notes.getvalue().decode().splitlines()
    progress = [line for line in said if line.startswith("launch: progress: elapsed ")]
    assert progress, said
    assert "samples/s over 2 rank(s)" in progress[-1] and "slowest rank" in progress[-1]
    steps = [int(found.group(1)) for line in progress if (found := re.search(r"\| step (\d+)", line))]
    assert steps == sorted(steps) and 0 < steps[-1] <= 25

    out, err = follower.communicate(timeout=120)
    assert follower.returncode == 0, out[-1000:] + err
    lines = out.splitlines()
    assert "[box/0] step 24" in lines and "[box/1] step 24" in lines
    assert not any("launch-event" in line for line in lines)
    run = tmp_path / "runs" / run_id
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "succeeded" and [r["steps"] for r in summary["ranks"]] == [22, 22]
    assert "step 24" in (run / "logs/box/rank1.log").read_text()
    assert status(run_id, tmp_path)["status"] == "succeeded"
    assert processes_of_run(run_id) == []


def test_detached_run_with_a_failing_rank_ends_by_itself(probe_job, tmp_path: Path) -> None:
    job = probe_job(LONG + ["--fail-rank", "1", "--fail-step", "5", "--fail-code", "4"])
    result = launch(str(job), "--detach", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.split()[2]
    wait_gone(run_id, 60)
    row = status(run_id, tmp_path)
    assert row["status"] == "failed" and row["hosts"] == {"box": "failed"}
    failure = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())["failure"]
    assert (failure["rank"], failure["exit_code"]) == (1, 4)


def test_stop_of_a_detached_run_leaves_nothing(probe_job, tmp_path: Path) -> None:
    job = probe_job(LONG)
    result = launch(str(job), "--detach", cwd=tmp_path)
    run_id = result.stdout.split()[2]
    deadline = time.monotonic() + 120
    log = tmp_path / "runs" / run_id / "logs/box/rank0.log"
    while not (log.exists() and "step 2" in log.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    stopped = launch("stop", run_id, cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert processes_of_run(run_id) == []
    assert status(run_id, tmp_path)["status"] == "stopped"
    assert json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())["status"] == "stopped"
    assert launch("stop", run_id, cwd=tmp_path).stdout.startswith(f"launch: run {run_id} has ended already (stopped)")


def test_a_rank_that_fails_once_restarts_keeps_both_attempts_and_resumes(tmp_path: Path) -> None:
    """Rank 1 fails at step 6 while rank 0 waits for it in that step's all-reduce (certainly still
    running, however unevenly the two started): the group restarts and both resume at 6."""
    shutil.copy(LOCKSTEP, tmp_path / "lockstep.py")
    (tmp_path / "job.yaml").write_text("name: lockstep\nnproc_per_node: 2\nruntime: host\nmax_restarts: 1\nenv: {OMP_NUM_THREADS: '1'}\n"
                                       "command: [python, lockstep.py, --steps, '12', --sleep, '0.05', --fail-rank, '1', --fail-step, '6']\n")
    result = launch(str(tmp_path / "job.yaml"), "--local", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "launch: attempt 2 of 2 (restart 1): the last attempt ended because rank 1 on local exited with code 3" in result.stdout
    assert {"[local/0] resumed from step 6", "[local/1] resumed from step 6"} <= set(result.stdout.splitlines())
    run = tmp_path / "runs" / run_id_of(result.stdout)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["restarts"] == 1
    first = (run / "logs/local/rank1.attempt0.log").read_text()
    assert "rank 1 failing on purpose at step 6" in first and "resumed" not in first
    healthy = (run / "logs/local/rank0.attempt0.log").read_text().splitlines()
    assert "step 5" in healthy and "step 6" not in healthy, healthy[-5:]
    assert "resumed from step 6" in (run / "logs/local/rank1.log").read_text()
    assert json.loads((run / "logs/local/rank1.attempt0.status.json").read_text())["exit_code"] == 3


def test_every_run_has_its_own_checkpoints_a_rerun_keeps_the_earlier_ones_and_resume_copies_them(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "4", "--checkpoint"], nproc=1)
    first = launch(str(job), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    first_id = run_id_of(first.stdout)
    plan = json.loads((tmp_path / "runs" / first_id / "plan.json").read_text())
    checkpoints = Path(plan["nodes"][0]["env"]["LAUNCH_CHECKPOINT_DIR"])
    assert checkpoints == tmp_path / f"runs/jobs/probe/runs/box/{first_id}/checkpoints"
    assert (checkpoints / "rank0.step").read_text() == "4"
    job.write_text(job.read_text().replace('"4"', '"6"'))
    resumed = launch(str(job), "--resume", cwd=tmp_path)
    assert f"launch: resuming from run {first_id}" in resumed.stdout
    assert "[box/0] resumed from step 4" in resumed.stdout.splitlines() and "[box/0] step 5" in resumed.stdout
    resumed_summary = json.loads((tmp_path / "runs" / run_id_of(resumed.stdout) / "summary.json").read_text())
    assert resumed_summary["resumed_from"] == first_id
    assert (checkpoints / "rank0.step").read_text() == "4", "the run resumed from keeps its own files as they were"
    fresh = launch(str(job), cwd=tmp_path)
    assert "resumed" not in fresh.stdout and "[box/0] step 0" in fresh.stdout.splitlines()
    assert (checkpoints / "rank0.step").read_text() == "4", "a plain rerun deletes no earlier run's checkpoints"
    newest = launch(str(job), "--resume", cwd=tmp_path)  # the newest run that kept checkpoints: the fresh one, at 6
    assert f"launch: resuming from run {run_id_of(fresh.stdout)}" in newest.stdout
    assert "[box/0] resumed from step 6" in newest.stdout.splitlines()
    chosen = launch(str(job), "--resume", first_id, cwd=tmp_path)  # a run named
    assert "[box/0] resumed from step 4" in chosen.stdout.splitlines(), chosen.stdout


def test_stop_of_an_attached_run_from_another_terminal(probe_job, tmp_path: Path) -> None:
    job = probe_job(LONG)
    proc = start_launcher(job, tmp_path)
    seen = read_until(proc, lambda lines: any("] step 2" in line for line in lines))
    run_id = run_id_of("".join(seen))
    stopped = launch("stop", run_id, cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, rest[-2000:]
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert summary["status"] == "stopped" and "stopped from outside the launcher" in summary["reason"]
    assert processes_of_run(run_id) == []
