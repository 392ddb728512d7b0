"""The metrics protocol, the launcher's side: reading step records (`rank<R>.jsonl` as the job
wrote them, or `rank<R>.auto.jsonl` as launch measured them), and the numbers a summary shows
(throughput, step-time percentiles, stragglers).

Kept out of what ships with the ranks (`launcher.node`): a threshold changed here changes no image.
"""

from __future__ import annotations

import enum
import json
import math
import statistics
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


class MetricsSource(str, enum.Enum):
    """Where a run's step records come from (summary.json's per-rank `metrics_source`)."""

    JOB = "job"  # the job's own rank<R>.jsonl
    AUTO = "auto"  # measured by launch in the rank's Python (optimizer steps, DataLoader batch sizes)


def pick_source(own: dict[int, list[StepRecord]], measured: dict[int, list[StepRecord]]) -> tuple[MetricsSource | None, dict[int, list[StepRecord]]]:
    """The records a run's numbers come from, by rank: the job's own when any rank wrote some (ranks
    that did not are missing), else those launch measured. One source for the whole run, because
    ranks' samples are added up and a job's may count other things (tokens, images) than batches."""
    if any(own.values()):
        return MetricsSource.JOB, own
    if any(measured.values()):
        return MetricsSource.AUTO, measured
    return None, {}


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


def rank_stats(records: list[StepRecord], warmup_steps: int) -> RankStats | None:
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
