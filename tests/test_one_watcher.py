"""One run, one watcher: a run followed from another terminal (`launch logs RUN --follow`) shows
what the attached launcher shows, in the same words, because both go through the same follower."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, launch, read_until, run_id_of, start_launcher

# a job of 2 ranks whose first attempt fails on rank 1 (the node restarts every rank), then prints and ends
JOB = '''\
import os, sys, time
rank, attempt = int(os.environ["RANK"]), int(os.environ["LAUNCH_ATTEMPT"])
for i in range(3):
    print(f"rank {rank} attempt {attempt} line {i}", flush=True)
    time.sleep(0.05)
if attempt == 0 and rank == 1:
    sys.exit(3)
time.sleep(60 if attempt == 0 else 0.5)  # the first attempt's other rank is stopped before its end
print(f"rank {rank} done", flush=True)
'''


def _shown(text: str) -> list[str]:
    """What a watcher shows of the run, timing aside: the ranks' lines in each rank's order, and the
    launcher's words on events (no progress, headers or summary)."""
    ranks: dict[str, list[str]] = {}
    words = []
    for line in text.splitlines():
        rank = re.match(r"^\[(\S+/\d+)\] ", line)
        if rank:
            ranks.setdefault(rank.group(1), []).append(line)
        elif line.startswith("launch: attempt ") or " is stopping: " in line or "killed what outlived" in line:
            words.append(line)
    return [line for key in sorted(ranks) for line in ranks[key]] + sorted(words)


def test_a_detached_run_followed_shows_what_an_attached_run_shows(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "job.yaml").write_text("name: watched\nnproc_per_node: 2\nmax_restarts: 1\nruntime: host\n"
                                       "command: [python, job.py]\n")
    attached = launch("job.yaml", "--local", "--runs-dir", "runs", cwd=tmp_path)
    assert attached.returncode == 0, attached.stdout + attached.stderr
    started = launch("job.yaml", "--local", "--detach", "--runs-dir", "runs", cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = re.search(r"launch: run (\S+) started", started.stdout).group(1)
    followed = launch("logs", run_id, "--follow", "--runs-dir", "runs", cwd=tmp_path)
    assert followed.returncode == 0, followed.stdout + followed.stderr

    seen_attached = _shown(attached.stdout)
    assert "[local/1] rank 1 attempt 1 line 2" in seen_attached and "[local/0] rank 0 done" in seen_attached
    assert any(line.startswith("launch: attempt 2 of 2 (restart 1)") for line in seen_attached), attached.stdout
    assert _shown(followed.stdout + followed.stderr) == seen_attached
    # no empty rank lines, and torchrun's own lines (and tracebacks) stay off the console, as attached
    for output in (attached.stdout, followed.stdout + followed.stderr):
        assert not re.search(r"^\[local/\d+\] ?$", output, re.M), output
        assert "Traceback" not in output and not re.search(r"^\[local\] ", output, re.M), output
    # both end with the summary table
    assert "succeeded" in followed.stderr and "succeeded" in attached.stdout


def _detached(tmp_path: Path, script: str, extra: str = "") -> str:
    (tmp_path / "job.py").write_text(script)
    (tmp_path / "job.yaml").write_text(f"name: watched\nnproc_per_node: 1\nruntime: host\ncommand: [python, job.py]\n{extra}")
    started = launch("job.yaml", "--local", "--detach", "--runs-dir", "runs", cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    return re.search(r"launch: run (\S+) started", started.stdout).group(1)


def _wait_for_line(tmp_path: Path, run_id: str, text: str, limit_s: float = 60) -> None:
    log = tmp_path / "runs" / run_id / "logs" / "local" / "rank0.log"
    deadline = time.monotonic() + limit_s
    while not (log.exists() and text in log.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        time.sleep(0.2)


def test_stop_names_what_had_to_be_killed(tmp_path: Path) -> None:
    run_id = _detached(tmp_path, (ROOT / "tests/jobs/stubborn.py").read_text())
    _wait_for_line(tmp_path, run_id, "stubborn rank 0")
    stopped = launch("stop", run_id, "--runs-dir", "runs", cwd=tmp_path, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert re.search(r"^launch: local: killed what outlived the 10 s grace period: .*rank 0: python job\.py \(pid \d+\)",
                     stopped.stdout, re.M), stopped.stdout
    assert json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())["status"] == "stopped"


def test_a_timed_out_run_shows_no_traceback_of_the_stop(tmp_path: Path) -> None:
    """torchrun prints a traceback of the signal that stopped it: that is not why the run failed."""
    run_id = _detached(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(300)\n", "timeout: 20s\n")
    followed = launch("logs", run_id, "--follow", "--runs-dir", "runs", cwd=tmp_path, timeout=120)
    assert followed.returncode == 1, followed.stdout + followed.stderr
    assert "[local/0] up" in followed.stdout and "Traceback" not in followed.stdout + followed.stderr
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert summary["status"] == "failed" and "timed out after 20 s" in summary["reason"]
    assert not any("Traceback" in line or "SignalException" in line for line in summary["failure"]["last_lines"]), summary


def test_the_first_status_of_a_lost_run_finishes_it(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(300)\n")
    (tmp_path / "job.yaml").write_text("name: lost\nnproc_per_node: 1\nruntime: host\ncommand: [python, job.py]\n")
    proc = start_launcher(tmp_path / "job.yaml", tmp_path, "--local", "--runs-dir", "runs")
    seen = read_until(proc, lambda lines: any("[local/0] up" in line for line in lines))
    run_id = run_id_of("".join(seen))
    proc.kill()
    proc.wait()
    node = tmp_path / "runs" / run_id / "logs" / "local" / "node.status.json"
    deadline = time.monotonic() + 60
    while not (node.exists() and json.loads(node.read_text()).get("state") not in (None, "running")):
        assert time.monotonic() < deadline, "the node did not stop when its lease ran out"
        time.sleep(0.2)
    status = launch("status", run_id, "--json", "--runs-dir", "runs", cwd=tmp_path)
    assert json.loads(status.stdout)["status"] == "lost", status.stdout + status.stderr
    assert json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())["status"] == "lost"


def test_a_launcher_started_with_sigint_ignored_keeps_it_ignored(tmp_path: Path) -> None:
    """As a script's background job (`launch job.yaml &`) or under nohup: a Ctrl-C meant for the
    script does not stop the run; SIGTERM does."""
    (tmp_path / "job.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(300)\n")
    (tmp_path / "job.yaml").write_text("name: bg\nnproc_per_node: 1\nruntime: host\ncommand: [python, job.py]\n")
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "job.yaml", "--local", "--runs-dir", "runs"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    seen = read_until(proc, lambda lines: any("[local/0] up" in line for line in lines))
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)  # handled after the SIGINT: had SIGINT counted, it would be the reason
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    summary = json.loads((tmp_path / "runs" / run_id_of("".join(seen)) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["reason"].startswith("SIGTERM received"), summary
