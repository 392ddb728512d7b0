"""launch's overhead on one box: `launch --local` against plain `torchrun --standalone`.

Both run jobs/allreduce/train.py with the same process count and steps, alternating, N times each;
the table gives every wall time, the medians and their ratio (goal: at most 1.10).
    .venv/bin/python bench/overhead.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs/allreduce/job.yaml"
GOAL = 1.10


def timed(argv: list[str], cwd: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(argv[:4])} ... failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs_dir:
        launch = [sys.executable, "-m", "launcher", str(JOB), "--local", "--runs-dir", runs_dir]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    "train.py", "--steps", "20"]
        timed(torchrun, JOB.parent)  # warm the page cache for both
        times: dict[str, list[float]] = {"launch --local": [], "torchrun --standalone": []}
        for _ in range(args.runs):
            times["launch --local"].append(timed(launch, ROOT))
            times["torchrun --standalone"].append(timed(torchrun, JOB.parent))
    table = Table(title=f"one-box overhead: allreduce job, 2 processes, {args.runs} runs each, alternating")
    table.add_column("command")
    for i in range(args.runs):
        table.add_column(f"run {i + 1} (s)", justify="right")
    table.add_column("median (s)", justify="right")
    for name, values in times.items():
        table.add_row(name, *(f"{v:.2f}" for v in values), f"{statistics.median(values):.2f}")
    ratio = statistics.median(times["launch --local"]) / statistics.median(times["torchrun --standalone"])
    console = Console(width=140)
    console.print(table)
    verdict = "meets" if ratio <= GOAL else "misses"
    console.print(f"ratio of medians launch/torchrun: {ratio:.3f} ({verdict} the goal of at most {GOAL:.2f})")


if __name__ == "__main__":
    main()
