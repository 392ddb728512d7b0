"""Long runs on the simulated lab: the launcher killed or cut off, a host lost, detached runs,
restarts across hosts. Real sshd and dockerd per host; faults made with the lab's own controls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROBE, ROOT, containers, host_runtime_job, lab_job, launch, read_until, run_id_of, start_launcher
from simlab import processes_of_run

pytestmark = pytest.mark.integration

LONG = ["--steps", "6000", "--sleep", "0.1"]  # 10 minutes: ended sooner, something stopped it
# What the README promises in seconds (a lease of 10 s, SIGKILL 5 s after SIGTERM), with room for a busy machine.
STOPS_WITHIN_S = 60
GATE = "/tmp/launch-test-go"  # in each container: lab_job(..., gate=GATE) runs the job once it exists
LOCKSTEP = ROOT / "tests/jobs/lockstep.py"
HOSTS = ("h1", "h2", "h3")
NOTHING = {"h1": [], "h2": [], "h3": []}


def start(job: Path, cwd: Path) -> subprocess.Popen:
    return start_launcher(job, cwd, "--runs-dir", str(cwd / "runs"))


def until_every_rank_stepped(proc: subprocess.Popen, step: int = 3) -> str:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if sum(f"] step {step}" in s for s in seen) == 3:
            break
    return "".join(seen)


def seconds_until_nothing_left(lab, run_id: str, limit_s: float, hosts=("h1", "h2", "h3")) -> float:
    """From now until no process of the run is left on the machine (every host shares its process
    table) and no container of it on `hosts`; fails after `limit_s`."""
    started = time.monotonic()
    while True:
        left = [p for p in processes_of_run(run_id) if _host_of(lab, p) in hosts]
        boxes = {h: ids for h, ids in containers(lab).items() if h in hosts and ids}
        if not left and not boxes:
            return time.monotonic() - started
        assert time.monotonic() - started < limit_s, f"after {limit_s} s: processes {left}, containers {boxes}"
        time.sleep(0.2)


def until_every_rank_stepped_on_its_host(lab, run_id: str, limit_s: float = 120) -> None:
    """Until every rank of a detached run has written a metric (the hosts hold them)."""
    deadline = time.monotonic() + limit_s
    while not all(lab.ssh(h, f"test -s /tmp/launch-runs-root/{run_id}/{h}/metrics/rank{r}.jsonl", check=False).returncode == 0
                  for r, h in enumerate(HOSTS)):
        assert time.monotonic() < deadline, f"not every rank stepped within {limit_s} s"
        time.sleep(0.5)


def open_gate(lab) -> None:
    """Let every container's gated job (lab_job(..., gate=GATE)) begin."""
    boxes = containers(lab)
    assert all(boxes.values()), boxes
    for host, ids in boxes.items():
        lab.docker(host, "exec", ids[0], "touch", GATE)


def status_json(run_id: str, cwd: Path) -> dict:
    result = launch("status", run_id, "--json", "--runs-dir", str(cwd / "runs"), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_sigkill_of_the_launcher_leaves_nothing_and_the_hosts_keep_the_logs(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, PROBE, LONG)
    proc = start(job, tmp_path)
    run_id = run_id_of(until_every_rank_stepped(proc))
    assert all(containers(lab).values())
    proc.kill()
    proc.wait()
    seconds_until_nothing_left(lab, run_id, STOPS_WITHIN_S)
    for host in ("h1", "h2", "h3"):  # each host keeps the run's logs and metrics
        assert lab.ssh(host, f"ls /tmp/launch-runs-root/{run_id}/{host}/logs/{host}").stdout.decode().split().count("node.out") == 1
    deadline = time.monotonic() + 120
    while not (tmp_path / "runs" / run_id / "summary.json").exists():
        assert time.monotonic() < deadline
        row = status_json(run_id, tmp_path)  # the run's lease file ages out; then status collects
        time.sleep(1)
    assert row["status"] == "lost" and row["hosts"] == {"h1": "stopped", "h2": "stopped", "h3": "stopped"}
    assert json.loads((tmp_path / "runs" / run_id / "logs/h3/rank2.status.json").read_text())["stopped"] is True
    assert lab.ssh("h2", f"test -e /tmp/launch-runs-root/{run_id}", check=False).returncode == 1
    logs = launch("logs", run_id, "--runs-dir", str(tmp_path / "runs"), "--rank", "1", cwd=tmp_path)
    assert "[h2/1] step 3" in logs.stdout.splitlines()


def test_the_launcher_cut_off_from_one_host_leaves_nothing(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, PROBE, LONG)
    proc = start(job, tmp_path)
    run_id = run_id_of(until_every_rank_stepped(proc))
    lab.cut_launcher("h2")
    try:
        seconds_until_nothing_left(lab, run_id, STOPS_WITHIN_S)
        rest, _ = proc.communicate(timeout=120)
    finally:
        lab.restore_launcher("h2")
    assert proc.returncode == 1, rest[-2000:]
    assert "host h2 was lost" in rest
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert (summary["status"], summary["failure"]["host"], summary["lost_host"]) == ("failed", "h2", "h2")
    assert containers(lab) == NOTHING


def test_a_host_lost_mid_run_is_named_and_the_others_stop(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, PROBE, LONG)
    proc = start(job, tmp_path)
    run_id = run_id_of(until_every_rank_stepped(proc))
    lab.cut_link("h3")
    cut = time.monotonic()
    try:
        rest, _ = proc.communicate(timeout=120)
        seconds = time.monotonic() - cut
        seconds_until_nothing_left(lab, run_id, STOPS_WITHIN_S, hosts=("h1", "h2"))
    finally:
        lab.restore_link("h3")
    assert proc.returncode == 1, rest[-2000:]
    assert seconds < STOPS_WITHIN_S, seconds
    assert "host h3 was lost" in rest, rest[-2000:]
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert (summary["status"], summary["failure"]["host"], summary["lost_host"]) == ("failed", "h3", "h3")
    seconds_until_nothing_left(lab, run_id, STOPS_WITHIN_S)  # h3's part stops by itself too


def _host_of(lab, pid: int) -> str | None:
    """Which lab host a process lives on, by its network namespace."""
    try:
        inode = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
    for host in lab.hosts:
        if os.stat(f"/run/netns/{host.netns}").st_ino == inode:
            return host.name
    return None


def test_a_detached_run_is_watched_followed_and_collected(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, PROBE, ["--steps", "40", "--sleep", "0.1"], gate=GATE)
    result = launch(str(job), "--detach", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    run_id = result.stdout.splitlines()[-2].split()[2]
    row = status_json(run_id, tmp_path)  # the ranks wait for the gate: the run certainly goes on
    assert (row["status"], row["detached"], row["hosts"]) == ("running", True, {"h1": "running", "h2": "running", "h3": "running"})
    open_gate(lab)
    follow = launch("logs", run_id, "--follow", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=180)
    assert follow.returncode == 0, follow.stdout[-2000:] + follow.stderr
    lines = follow.stdout.splitlines()
    assert all(f"[{host}/{rank}] step 39" in lines for rank, host in enumerate(("h1", "h2", "h3")))
    run = tmp_path / "runs" / run_id
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "succeeded" and [r["host"] for r in summary["ranks"]] == ["h1", "h2", "h3"]
    for rank, host in enumerate(("h1", "h2", "h3")):
        assert "step 39" in (run / "logs" / host / f"rank{rank}.log").read_text()
        assert len((run / "metrics" / f"rank{rank}.jsonl").read_text().splitlines()) == 40
    assert status_json(run_id, tmp_path)["status"] == "succeeded"
    assert containers(lab) == NOTHING


def test_a_detached_run_with_a_failing_rank_ends_on_every_host(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, PROBE, LONG + ["--fail-rank", "1", "--fail-step", "8", "--fail-code", "6"])
    result = launch(str(job), "--detach", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    run_id = result.stdout.splitlines()[-2].split()[2]
    seconds_until_nothing_left(lab, run_id, 90)
    row = status_json(run_id, tmp_path)
    assert row["status"] == "failed" and row["hosts"] == {"h1": "stopped", "h2": "failed", "h3": "stopped"}
    failure = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())["failure"]
    assert (failure["host"], failure["rank"], failure["exit_code"]) == ("h2", 1, 6)


def test_stop_of_a_detached_run_leaves_nothing(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, PROBE, LONG)
    result = launch(str(job), "--detach", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    run_id = result.stdout.splitlines()[-2].split()[2]
    until_every_rank_stepped_on_its_host(lab, run_id)
    stopped = launch("stop", run_id, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert processes_of_run(run_id) == [] and containers(lab) == NOTHING
    assert status_json(run_id, tmp_path)["status"] == "stopped"
    for host in ("h1", "h2", "h3"):
        assert lab.ssh(host, f"test -e /tmp/launch-runs-root/{run_id}", check=False).returncode == 1


def test_a_crash_restarts_every_host_and_resumes_from_its_checkpoint(tmp_path: Path, lab, base_image: str) -> None:
    """Rank 2 fails at step 10 while the others wait for it in that step's all-reduce (certainly
    still running, however unevenly the hosts started): every host restarts, every rank resumes at 10."""
    job = lab_job(tmp_path, lab, base_image, LOCKSTEP, ["--steps", "20", "--sleep", "0.05", "--fail-rank", "2", "--fail-step", "10"],
                  extra="max_restarts: 1\n")
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "launch: attempt 2 of 2 (restart 1): the last attempt ended because rank 2 on h3 exited with code 3" in result.stdout
    lines = result.stdout.splitlines()
    assert all(f"[{host}/{rank}] resumed from step 10" in lines for rank, host in enumerate(HOSTS)), result.stdout[-3000:]
    run = tmp_path / "runs" / run_id_of(result.stdout)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["restarts"]) == ("succeeded", 1)
    for rank, host in enumerate(HOSTS):  # every host restarted, and kept both attempts
        first = (run / "logs" / host / f"rank{rank}.attempt0.log").read_text().splitlines()
        assert "step 9" in first and "step 10" not in first, (host, first[-5:])
        assert "step 19" in (run / "logs" / host / f"rank{rank}.log").read_text()
    assert "rank 2 failing on purpose at step 10" in (run / "logs/h3/rank2.attempt0.log").read_text()
    assert containers(lab) == NOTHING


def test_runtime_host_nodes_stop_with_a_killed_launcher_and_run_detached(tmp_path: Path, lab) -> None:
    job = host_runtime_job(tmp_path, lab, PROBE, LONG)
    proc = start(job, tmp_path)
    run_id = run_id_of(until_every_rank_stepped(proc))
    proc.kill()
    proc.wait()
    seconds_until_nothing_left(lab, run_id, STOPS_WITHIN_S)
    job.write_text(job.read_text().replace('"6000"', '"20"'))
    result = launch(str(job), "--detach", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    run_id = result.stdout.splitlines()[-2].split()[2]
    follow = launch("logs", run_id, "--follow", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=180)
    assert follow.returncode == 0, follow.stdout[-2000:] + follow.stderr
    assert "[h3/2] step 19" in follow.stdout.splitlines()
    assert json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())["status"] == "succeeded"
    assert processes_of_run(run_id) == []


def test_a_host_lost_from_a_detached_run_in_a_collective_stops_every_rank(tmp_path: Path, lab, base_image: str) -> None:
    """The ranks of the other hosts wait in an all-reduce for the lost one: the nodes stop them."""
    job = lab_job(tmp_path, lab, base_image, ROOT / "jobs/allreduce/train.py", ["--steps", "100000", "--sleep", "0.05"])
    result = launch(str(job), "--detach", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    run_id = result.stdout.splitlines()[-2].split()[2]
    until_every_rank_stepped_on_its_host(lab, run_id)
    lab.cut_link("h3")
    try:
        seconds_until_nothing_left(lab, run_id, STOPS_WITHIN_S)
    finally:
        lab.restore_link("h3")
    row = status_json(run_id, tmp_path)
    assert row["status"] == "failed" and row["hosts"] == {"h1": "stopped", "h2": "stopped", "h3": "stopped"}
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert (summary["lost_host"], summary["failure"]["host"]) == ("h3", "h3")


@pytest.mark.parametrize("runtime, sig", [("docker", signal.SIGHUP), ("host", signal.SIGINT)], ids=["docker-terminal-closed", "host-ctrl-c"])
def test_ctrl_c_or_a_closed_terminal_stops_ranks_that_ignore_sigterm_on_every_kind_of_node(
        tmp_path: Path, lab, base_image: str, runtime: str, sig: signal.Signals) -> None:
    """The run stops, its ranks that ignore SIGTERM are killed and named, and its files (the secrets
    file with them) are gone from every host."""
    stubborn = ROOT / "tests/jobs/stubborn.py"
    job = lab_job(tmp_path, lab, base_image, stubborn, []) if runtime == "docker" else host_runtime_job(tmp_path, lab, stubborn, [])
    job.write_text(job.read_text() + "secrets: [LAB_TOKEN]\n")
    proc = start_launcher(job, tmp_path, "--runs-dir", str(tmp_path / "runs"), env={"LAB_TOKEN": "hup-secret-value"})
    seen = read_until(proc, lambda lines: sum("stubborn rank" in line for line in lines) == 3)
    run_id = run_id_of("".join(seen))
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output
    seconds_until_nothing_left(lab, run_id, STOPS_WITHIN_S)
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["reason"] == f"{sig.name} received; stopped every node"
    for rank, host in enumerate(HOSTS):
        assert rank in {p["rank"] for p in summary["killed"][host] if "stubborn.py" in p["command"]}, summary["killed"]
        assert f"had to be killed on {host}" in output
        assert lab.ssh(host, f"test -e /tmp/launch-runs-root/{run_id}", check=False).returncode == 1
