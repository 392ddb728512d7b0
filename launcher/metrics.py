"""The metrics protocol: reading `rank<R>.jsonl` files and the numbers a summary shows.

A rank appends one JSON object per step, at least `{"step": 3, "samples": 256, "step_time_s": 0.041}`,
where `samples` counts what that rank processed in that step. `MetricsWriter` writes them for a job,
but a job that writes them by hand works the same.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepRecord:
    step: int
    samples: float
    step_time_s: float


def read_records(path: Path) -> list[StepRecord]:
    """Every well-formed step record in a file; a torn or foreign line is skipped, not fatal."""
    records: list[StepRecord] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return records
    for line in text.splitlines():
        try:
            raw = json.loads(line)
            record = StepRecord(int(raw["step"]), float(raw["samples"]), float(raw["step_time_s"]))
        except (ValueError, KeyError, TypeError):
            continue
        if record.step_time_s > 0 and record.samples >= 0:
            records.append(record)
    return records


DEFAULT_WARMUP_STEPS = 3
STRAGGLER_THRESHOLD = 1.25  # slower than 1.25 x the median of all ranks' median step times


@dataclass(frozen=True)
class RankStats:
    """One rank's steady-state numbers: its first `warmup_excluded` steps are left out."""

    steps: int
    warmup_excluded: int
    samples: float
    step_time_total_s: float
    step_time_median_s: float
    step_time_p95_s: float
    samples_per_step: float  # the rank's batch: the median of its steps' `samples`

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.step_time_total_s if self.step_time_total_s > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[index]


def rank_stats(records: list[StepRecord], warmup_steps: int = DEFAULT_WARMUP_STEPS) -> RankStats | None:
    """Throughput and step times of one rank after warm-up; None when it reported no step.

    A rank with no more steps than `warmup_steps` is measured on all of them (warmup_excluded 0).
    """
    if not records:
        return None
    steady = records[warmup_steps:] if len(records) > warmup_steps else records
    times = [r.step_time_s for r in steady]
    return RankStats(
        steps=len(steady),
        warmup_excluded=len(records) - len(steady),
        samples=sum(r.samples for r in steady),
        step_time_total_s=sum(times),
        step_time_median_s=statistics.median(times),
        step_time_p95_s=percentile(times, 95),
        samples_per_step=statistics.median(r.samples for r in steady),
    )


def stragglers(medians: dict[Any, float], threshold: float = STRAGGLER_THRESHOLD) -> list[Any]:
    """The keys (ranks or hosts) whose median step time exceeds `threshold` x the median of all."""
    if len(medians) < 2:
        return []
    typical = statistics.median(medians.values())
    return sorted(key for key, value in medians.items() if value > threshold * typical)


class MetricsWriter:
    """Appends step records to `$LAUNCH_METRICS_DIR/rank$RANK.jsonl` (a no-op outside a launch).

        metrics = MetricsWriter()
        for step, batch in enumerate(loader):
            with metrics.step(samples=len(batch)):
                train_step(batch)
    """

    def __init__(self, directory: str | None = None, rank: int | None = None) -> None:
        directory = directory if directory is not None else os.environ.get("LAUNCH_METRICS_DIR")
        rank = rank if rank is not None else int(os.environ.get("RANK", "0"))
        self.path = Path(directory) / f"rank{rank}.jsonl" if directory else None
        self._next_step = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, samples: float, step_time_s: float, step: int | None = None, **extra: Any) -> None:
        step = self._next_step if step is None else step
        self._next_step = step + 1
        if self.path is None:
            return
        record = {"step": step, "samples": samples, "step_time_s": step_time_s, **extra}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def step(self, samples: float, **extra: Any) -> "_StepTimer":
        return _StepTimer(self, samples, extra)


class _StepTimer:
    def __init__(self, writer: MetricsWriter, samples: float, extra: dict[str, Any]) -> None:
        self.writer, self.samples, self.extra = writer, samples, extra

    def __enter__(self) -> "_StepTimer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.writer.log(self.samples, time.perf_counter() - self.start, **self.extra)
