"""Faults during long runs on 3 simulated hosts: how long until every rank is stopped, what is left.

For each fault, seconds from the fault to the last process of the run gone on any host (every lab
host shares this machine's process table, so the run's processes are found by their
LAUNCH_RUN_ID) and to no container of the run on any host, and what was left after 60 s.
Then `launch --detach` wall time against an attached launch of the same job up to its ranks'
first line (image warm on the hosts), as a ratio measured in this run.
Needs root and the lab's set-up (scripts/setup-lab.sh).
    .venv/bin/python bench/faults.py
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import simlab  # noqa: E402
from simlab import processes_of_run  # noqa: E402

PROBE = ROOT / "tests/jobs/probe.py"
LIMIT_S = 60.0


def containers(lab: simlab.Lab, run_id: str) -> dict[str, list[str]]:
    return {h.name: lab.docker(h.name, "ps", "-aq", "--filter", f"label=launch.run_id={run_id}").stdout.decode().split()
            for h in lab.hosts}


def until_nothing_left(lab: simlab.Lab, run_id: str, since: float) -> tuple[float | None, str]:
    """Seconds from `since` until nothing of the run is left; what was left after LIMIT_S."""
    while time.monotonic() - since < LIMIT_S:
        procs = processes_of_run(run_id)
        boxes = {h: c for h, c in containers(lab, run_id).items() if c}
        if not procs and not boxes:
            return time.monotonic() - since, "nothing"
        time.sleep(0.1)
    return None, f"{len(processes_of_run(run_id))} process(es), containers {containers(lab, run_id)}"


class Bench:
    def __init__(self, lab: simlab.Lab, base: str, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.job = tmp / "job"
        self.job.mkdir()
        (self.job / "probe.py").write_text(PROBE.read_text())
        self.base = base

    def write_job(self, args: list[str]) -> Path:
        path = self.job / "job.yaml"
        path.write_text(
            f"name: bench-faults\ncluster: {self.lab.cluster_file}\nnproc_per_node: 1\nbackend: gloo\n"
            f"command: {json.dumps(['python', 'probe.py', *args])}\nenv: {{OMP_NUM_THREADS: '1'}}\n"
            f"image: {{base: '{self.base}'}}\nruntime: docker\ntimeout: 30m\n"
        )
        return path

    def launch(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "launcher", *args, "--runs-dir", str(self.tmp / "runs")],
                              cwd=self.tmp, capture_output=True, text=True, **kw)

    def start_attached(self, args: list[str]) -> tuple[subprocess.Popen, str]:
        job = self.write_job(args)
        proc = subprocess.Popen([sys.executable, "-m", "launcher", str(job), "--runs-dir", str(self.tmp / "runs")],
                                cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        run_id, stepped = "", 0
        for line in proc.stdout:
            if line.startswith("launch: run "):
                run_id = line.split()[2]
            stepped += "] step 3" in line
            if stepped == 3:
                break
        threading_drain(proc)
        return proc, run_id

    def detached(self, args: list[str]) -> str:
        result = self.launch(str(self.write_job(args)), "--detach")
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.splitlines()[-2].split()[2]


def threading_drain(proc: subprocess.Popen) -> None:
    """Keep reading the launcher's output so that it never blocks on a full pipe."""
    assert proc.stdout is not None
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()


def main() -> None:
    base = subprocess.run([str(ROOT / "images/build-cpu-base.sh")], capture_output=True, text=True, check=True).stdout.split()[-1]
    lab = simlab.Lab(hosts=3, prefix="lfault", subnet=9).up()
    lab.ensure_image(base)
    tmp = Path(tempfile.mkdtemp(prefix="launch-faults-"))
    rows: list[tuple[str, str, str, str]] = []
    long_run = ["--steps", "100000", "--sleep", "0.1"]
    bench = Bench(lab, base, tmp)
    try:
        warm = bench.launch(str(bench.write_job(["--steps", "1"])))  # builds and ships the image once
        assert warm.returncode == 0, warm.stdout[-2000:] + warm.stderr

        # 1. the launcher is killed
        proc, run_id = bench.start_attached(long_run)
        fault = time.monotonic()
        proc.kill()
        secs, left = until_nothing_left(lab, run_id, fault)
        rows.append(("launcher SIGKILL", fmt(secs), left, "20"))

        # 2. the launcher is cut off from one host (its own side of the link)
        proc, run_id = bench.start_attached(long_run)
        lab.cut_launcher("h2")
        fault = time.monotonic()
        try:
            secs, left = until_nothing_left(lab, run_id, fault)
            proc.wait(timeout=LIMIT_S)
            exited = time.monotonic() - fault
        finally:
            lab.restore_launcher("h2")
        rows.append(("launcher cut from h2", fmt(secs), f"{left}; launcher exit {proc.returncode} after {exited:.1f} s", "20"))

        # 3. a host's link is cut (the host goes on, unreachable)
        proc, run_id = bench.start_attached(long_run)
        lab.cut_link("h3")
        fault = time.monotonic()
        try:
            proc.wait(timeout=LIMIT_S)
            exited = time.monotonic() - fault
            secs, left = until_nothing_left(lab, run_id, fault)
        finally:
            lab.restore_link("h3")
        summary = json.loads((tmp / "runs" / run_id / "summary.json").read_text())
        rows.append(("h3's link cut", fmt(secs),
                     f"{left}; launcher exit {proc.returncode} after {exited:.1f} s naming {summary.get('lost_host')}", "30"))

        # 4. a rank fails in a detached run (fail-fast on the nodes)
        run_id = bench.detached(["--steps", "100000", "--sleep", "0.1", "--fail-rank", "1", "--fail-step", "30"])
        while True:  # the failing rank's status, on h2, tells when it failed
            found = lab.ssh("h2", f"cat /tmp/launch-runs-root/{run_id}/h2/logs/h2/rank1.status.json", check=False)
            if found.returncode == 0:
                failed_at = json.loads(found.stdout)["end_time"]
                break
            time.sleep(0.1)
        fault = time.monotonic() - (time.time() - failed_at)
        secs, left = until_nothing_left(lab, run_id, fault)
        rows.append(("rank fails, detached run", fmt(secs), left, "seconds"))

        # 5. launch stop of a detached run
        run_id = bench.detached(long_run)
        time.sleep(3)
        fault = time.monotonic()
        stopped = bench.launch("stop", run_id)
        took = time.monotonic() - fault
        secs, left = until_nothing_left(lab, run_id, fault)
        rows.append(("launch stop (detached)", fmt(secs), f"{left}; stop took {took:.1f} s, exit {stopped.returncode}", "-"))

        # --detach against an attached launch up to the ranks' first line
        attached, detached = [], []
        for _ in range(3):
            job = bench.write_job(long_run)
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "launcher", str(job), "--runs-dir", str(tmp / "runs")],
                                    cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("[h") and "/" in line.split()[0]:
                    attached.append(time.monotonic() - start)
                    break
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=120)
            start = time.monotonic()
            run_id = bench.detached(long_run)
            detached.append(time.monotonic() - start)
            bench.launch("stop", run_id)
    finally:
        lab.down()

    table = Table(title="faults on 3 simulated hosts (one run each)")
    for column in ("fault", "to last rank stopped (s)", "left / launcher", "goal (s)"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    med_a, med_d = sorted(attached)[1], sorted(detached)[1]
    timing = Table(title="--detach wall time vs attached launch up to the ranks' first line (median of 3)")
    for column in ("attached, to first rank line (s)", "--detach, to return (s)", "ratio detach/attached"):
        timing.add_column(column)
    timing.add_row(f"{med_a:.2f}", f"{med_d:.2f}", f"{med_d / med_a:.2f}")
    Console().print(timing)
    print("attached:", [round(x, 2) for x in attached], "detached:", [round(x, 2) for x in detached])
    shutil.rmtree(tmp, ignore_errors=True)


def fmt(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else f"> {LIMIT_S:g}"


if __name__ == "__main__":
    main()
