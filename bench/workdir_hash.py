"""Hashing a workdir on each launch: a cold scan (every file read) against a scan of the same,
unchanged workdir with the hash cache (one stat per file), and after a one-file edit.

    .venv/bin/python bench/workdir_hash.py [--mb 1024] [--files 4000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from launcher.sync.manifest import scan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="launch-hash-bench-"))
    try:
        work = tmp / "work"
        size = args.mb * 10**6 // args.files
        for i in range(args.files):
            folder = work / f"d{i % 40:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i:05d}.bin").write_bytes(os.urandom(size))
        old = time.time() - 3600  # as files that were written before this launch (not racily clean)
        for path in work.rglob("*.bin"):
            os.utime(path, (old, old))
        cold, warm, edited = [], [], []
        for run in range(args.runs):
            cache = tmp / f"cache{run}"
            start = time.perf_counter()
            first = scan(work, cache)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            again = scan(work, cache)
            warm.append(time.perf_counter() - start)
            assert again == first
            target = work / "d00" / "f00000.bin"
            target.write_bytes(os.urandom(size))
            os.utime(target, (old + run + 1, old + run + 1))
            start = time.perf_counter()
            changed = scan(work, cache)
            edited.append(time.perf_counter() - start)
            assert changed.digest != first.digest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table(title=f"workdir of {args.mb} MB in {args.files} files; medians of {args.runs} runs")
    for col in ("scan", "seconds", "x cold"):
        table.add_column(col, justify="left" if col == "scan" else "right")
    c = statistics.median(cold)
    for name, values in (("cold (no cache: every file read)", cold), ("unchanged (cache)", warm), ("one file edited (cache)", edited)):
        table.add_row(name, f"{statistics.median(values):.3f}", f"{statistics.median(values) / c:.4f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
