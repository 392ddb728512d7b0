"""What each acceleration of the book buys on this machine: the reference job's samples/s, as ratios.

Runs jobs/book/resnet18_cifar10.py under `launch --local` on the synthetic data, once per
configuration and process count: the naive loop (the seed article's: no flag), each acceleration
alone, and all of them together; then prints samples/s (from summary.json: every rank's samples over
its step times, after warm-up) and the ratio to the naive loop of the same process count, measured
in the same run.

    .venv/bin/python bench/reference.py [--steps 25] [--ranks 1 2] [--repeat 1] [--out FILE.json]

The same command runs on a CUDA machine: there the ranks use NCCL, one GPU each (so no more ranks
than GPUs), `--amp` is float16 with a gradient scaler and the batch is larger (`--batch-size`).
Accumulation does not make a step faster; its row shows what splitting the same batch in two costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "jobs" / "book"


def configurations(batch: int, cuda: bool) -> dict[str, list[str]]:
    workers = ["--workers", "4" if cuda else "2"]
    return {
        "naive loop": [],
        "--amp": ["--amp"],
        "--channels-last": ["--channels-last"],
        "--compile": ["--compile"],
        "--workers": workers,
        "--accum-steps 2 (same batch)": ["--accum-steps", "2", "--batch-size", str(batch // 2)],
        "all but accumulation": ["--amp", "--channels-last", "--compile", *workers],
    }


def run(flags: list[str], ranks: int, args: argparse.Namespace, cuda: bool, runs_dir: Path) -> tuple[float, float | None]:
    """One `launch --local`: the run's samples/s, and the compile time when it said one."""
    command = ["python", "resnet18_cifar10.py", "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
               "--synthetic-size", str(args.batch_size * ranks * (args.steps + 1)), "--eval-size", "64",
               "--log-every", "0", "--checkpoint-every", "0", *flags]
    job = runs_dir / f"bench-{ranks}.yaml"
    job.write_text(
        f"name: reference-bench\nworkdir: {BOOK}\nnproc_per_node: {ranks}\nbackend: {'nccl' if cuda else 'gloo'}\n"
        f"runtime: host\ncommand: {json.dumps(command)}\nenv: {{OMP_NUM_THREADS: '{args.threads}'}}\ntimeout: 30m\n"
        f"warmup_steps: {args.warmup}\n"
    )
    result = subprocess.run([sys.executable, "-m", "launcher", str(job), "--local", "--runs-dir", str(runs_dir)],
                            cwd=runs_dir, capture_output=True, text=True, env=dict(os.environ, CIFAR10_DIR=""))
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(flags) or 'naive'} at {ranks} rank(s) failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    run_id = re.search(r"^launch: run (\S+) on", result.stdout, re.M).group(1)
    summary = json.loads((runs_dir / run_id / "summary.json").read_text())
    compiled = re.search(r"compiling included, took ([\d.]+) s", result.stdout)
    return summary["throughput_samples_per_s"], float(compiled.group(1)) if compiled else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps per run (the first --warmup are not measured)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ranks", type=int, nargs="+", default=None, help="process counts (default 1 2; on CUDA up to the GPUs)")
    parser.add_argument("--batch-size", type=int, default=None, help="per rank (default 32 on CPU, 256 on CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per rank")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the median counts")
    parser.add_argument("--only", nargs="+", help="configurations to run (names as in the table)")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    args.batch_size = args.batch_size or (256 if cuda else 32)
    ranks = args.ranks or ([n for n in (1, 2) if n <= gpus] if cuda else [1, 2])
    configs = configurations(args.batch_size, cuda)
    if args.only:
        configs = {name: flags for name, flags in configs.items() if name in args.only or name == "naive loop"}
    device = torch.cuda.get_device_name(0) if cuda else f"CPU, {os.cpu_count()} cores"
    console = Console(width=150)
    console.print(f"reference job (ResNet-18, CIFAR-10 shape, synthetic data) on {device}, torch {torch.__version__}; "
                  f"batch {args.batch_size} per rank, {args.steps} steps per run ({args.warmup} warm-up), "
                  f"{args.threads} thread(s) per rank")

    results: dict[str, dict[int, dict[str, float | None]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in configs.items():
            results[name] = {}
            for n in ranks:
                measured = [run(flags, n, args, cuda, Path(tmp)) for _ in range(args.repeat)]
                compile_s = [c for _, c in measured if c is not None]
                results[name][n] = {"samples_per_s": statistics.median(t for t, _ in measured),
                                    "compile_s": statistics.median(compile_s) if compile_s else None}
                console.print(f"  {name} at {n} rank(s): {results[name][n]['samples_per_s']:.1f} samples/s", highlight=False)

    table = Table(title="samples/s of the reference job, and the ratio to the naive loop at the same rank count")
    table.add_column("configuration")
    for n in ranks:
        table.add_column(f"{n} rank(s): samples/s", justify="right")
        table.add_column("x naive", justify="right")
    table.add_column("first step with compiling (s)", justify="right")
    for name, cells in results.items():
        row = [name]
        for n in ranks:
            base = results["naive loop"][n]["samples_per_s"]
            value = cells[n]["samples_per_s"]
            row += [f"{value:.1f}", f"{value / base:.2f}" if base else "-"]
        compile_s = [c["compile_s"] for c in cells.values() if c["compile_s"] is not None]
        row.append(" / ".join(f"{c:.0f}" for c in compile_s) if compile_s else "")
        table.add_row(*row)
    console.print(table)
    if args.out:
        args.out.write_text(json.dumps({"device": device, "torch": torch.__version__, "batch_size": args.batch_size,
                                        "steps": args.steps, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
