"""Faults on the launcher's own machine during a one-box run: the run directory's disk full or made
read-only mid-run, and an error the launcher did not expect. The run stops cleanly, says what it
could not do, leaves no half-written file and no process."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import launch, read_until, run_id_of, start_launcher
from simlab import processes_of_run

pytestmark = pytest.mark.integration

CHATTY = (
    "import sys, time\n"
    "for i in range(int(sys.argv[1])):\n"
    "    print(f'line {i} ' + 'x' * 1000, flush=True)\n"
    "    time.sleep(float(sys.argv[2]))\n"
    "print('done', flush=True)\n"
)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB file system for the run directory (root only: the test machines run the suite as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def chatty_job(tmp_path: Path, lines: int, pause: float) -> Path:
    (tmp_path / "chatty.py").write_text(CHATTY)
    (tmp_path / "job.yaml").write_text(f"name: chatty\nnproc_per_node: 2\nruntime: host\ncommand: [python, chatty.py, '{lines}', '{pause}']\n")
    return tmp_path / "job.yaml"


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_under_the_run_directory(tmp_path: Path, small_disk: Path) -> None:
    job = chatty_job(tmp_path, 3000, 0)  # 2 ranks x 3 MB of lines into 2 MB
    result = launch(str(job), "--local", "--runs-dir", str(small_disk / "runs"), cwd=tmp_path, timeout=180)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert result.returncode == 0, output  # the ranks did their work: the run succeeded, its files are short
    assert "cannot write this rank's log any more (No space left on device)" in output
    assert "[local/1] done" in output and "[local/0] done" in output
    run = small_disk / "runs" / run_id_of(output)
    assert leftovers(small_disk) == []
    if not (run / "summary.json").exists():
        assert f"cannot write {run / 'summary.json'}: No space left on device" in output
    else:
        json.loads((run / "summary.json").read_text())
    assert processes_of_run(run.name) == []


def test_a_run_directory_made_read_only_mid_run(tmp_path: Path, small_disk: Path) -> None:
    job = chatty_job(tmp_path, 40, 0.1)
    proc = start_launcher(job, tmp_path, "--local", "--runs-dir", str(small_disk / "runs"))
    seen = read_until(proc, lambda lines: sum("] line 5 " in line for line in lines) == 2)
    runs = small_disk / "runs"  # read-only from now on for whatever opens a file in it
    subprocess.run(["mount", "--bind", str(runs), str(runs)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(runs)], check=True)
    try:
        rest, _ = proc.communicate(timeout=120)
    finally:
        subprocess.run(["umount", str(runs)], check=True)
    output = "".join(seen) + rest
    assert "Traceback" not in output
    assert proc.returncode == 0, output
    assert "[local/0] done" in output
    run = small_disk / "runs" / run_id_of(output)
    assert f"cannot write {run / 'summary.json'}: Read-only file system" in output
    assert "the summary below is only on this terminal" in output and "world size 2" in output
    assert leftovers(small_disk) == [] and not (run / "summary.json").exists()
    assert processes_of_run(run.name) == []


def test_an_unexpected_error_stops_every_node_and_keeps_its_traceback(tmp_path: Path) -> None:
    """A bug in the launcher's watch loop (planted by a sitecustomize of this test only)."""
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('PLANT_BUG'):\n"
        "    from launcher.run import attach\n"
        "    def broken(self, *args):\n"
        "        import time\n"
        "        time.sleep(4)\n"
        "        raise ZeroDivisionError('planted bug')\n"
        "    attach.Attached._watch = broken\n"
    )
    (tmp_path / "sleepy.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(300)\n")
    (tmp_path / "job.yaml").write_text("name: sleepy\nnproc_per_node: 2\nruntime: host\ncommand: [python, sleepy.py]\n")
    started = time.monotonic()
    result = launch(str(tmp_path / "job.yaml"), "--local", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path,
                    env={"PLANT_BUG": "1", "PYTHONPATH": f"{plant}:{Path(__file__).resolve().parent.parent}"}, timeout=120)
    assert time.monotonic() - started < 120  # the ranks would sleep for 300 s
    output = result.stdout + result.stderr
    launchers_own = "".join(line for line in output.splitlines(keepends=True) if not line.startswith("[local]"))  # not torchrun's
    assert result.returncode == 1 and "Traceback" not in launchers_own, output
    run = tmp_path / "runs" / run_id_of(output)
    assert f"the launcher hit an unexpected error; every node was stopped; the traceback is in {run / 'launcher-error.txt'}" in output
    assert "ZeroDivisionError: planted bug" in (run / "launcher-error.txt").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "ZeroDivisionError: planted bug" in summary["reason"]
    assert summary["error"]["message"] == "ZeroDivisionError: planted bug"
    assert processes_of_run(run.name) == []
