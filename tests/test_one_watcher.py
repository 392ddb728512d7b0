"""One run, one watcher: a run followed from another terminal (`launch logs RUN --follow`) shows
what the attached launcher shows, in the same words, because both go through the same follower."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import launch

# a job of 2 ranks whose first attempt fails on rank 1 (the node restarts it), then prints and ends
JOB = '''\
import os, sys, time
rank, attempt = int(os.environ["RANK"]), int(os.environ["LAUNCH_ATTEMPT"])
for i in range(3):
    print(f"rank {rank} attempt {attempt} line {i}", flush=True)
    time.sleep(0.05)
if attempt == 0 and rank == 1:
    sys.exit(3)
time.sleep(0.5)
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
