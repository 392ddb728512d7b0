"""What launch's automatic step metrics cost (launcher/node/stepmetrics.py, launcher/node/startup/).

- per step: short loops of tiny steps (fetch a DataLoader batch, forward, backward,
  `optimizer.step()`) with the hooks in and out, alternating in one process, so that each pair of
  loops sees the same machine; the median over pairs of the extra CPU time per step.
- per process: `python -c pass` with the startup hook on PYTHONPATH and without (medians).
    .venv/bin/python bench/step_metrics.py [--steps 200] [--runs 200]
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

import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from launcher.node import contract, stepmetrics  # noqa: E402
from launcher.node.rankexec import STARTUP_DIR  # noqa: E402


def tiny_training(steps: int):
    """A loop of `steps` tiny steps; returns its CPU seconds (time spent waiting for a busy machine's
    cores does not count)."""
    torch.set_num_threads(1)
    loader = DataLoader(TensorDataset(torch.randn(steps, 4), torch.randn(steps, 1)), batch_size=1)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def loop() -> float:
        start = time.process_time()
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        return time.process_time() - start

    return loop


def startup_ms(hooked: bool, metrics_dir: str, runs: int) -> float:
    env = dict(os.environ, RANK="0")
    env.pop("PYTHONPATH", None)
    if hooked:
        env.update({"PYTHONPATH": STARTUP_DIR, contract.METRICS_DIR: metrics_dir})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per loop")
    parser.add_argument("--runs", type=int, default=200, help="pairs of loops, without and with the hooks")
    args = parser.parse_args()
    loop = tiny_training(args.steps)
    loop()  # warm up
    plain, hooked = [], []
    with tempfile.TemporaryDirectory() as metrics_dir:
        path = Path(metrics_dir) / contract.auto_metrics_file(0)
        recorder = stepmetrics.StepRecorder(str(path))
        for _ in range(args.runs):
            plain.append(loop())
            uninstall = stepmetrics.install(recorder)
            hooked.append(loop())
            uninstall()
        recorder.flush()
        assert len(path.read_text().splitlines()) == args.steps * args.runs, "the hooks recorded every step"
        without, with_hook = startup_ms(False, metrics_dir, 15), startup_ms(True, metrics_dir, 15)
    us = 1e6 / args.steps
    extra = statistics.median(h - p for h, p in zip(hooked, plain)) * us
    print(f"{args.runs} pairs of loops of {args.steps} steps; a plain step takes {statistics.median(plain) * us:.1f} us of CPU")
    print(f"extra CPU time per step with the hooks: {extra:+.2f} us (median over pairs)")
    print(f"python -c pass: {without:.1f} ms without the startup hook, {with_hook:.1f} ms with it (medians)")


if __name__ == "__main__":
    main()
