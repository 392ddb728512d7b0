"""The metrics protocol, the rank's side: `MetricsWriter` appends step records for a job.

A rank appends one JSON object per step to `$LAUNCH_METRICS_DIR/rank$RANK.jsonl`, at least
`{"step": 3, "samples": 256, "step_time_s": 0.041}`, where `samples` counts what that rank processed
in that step. A job that writes them by hand works the same; the launcher reads them
(`launcher.results.stats`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from . import contract


class MetricsWriter:
    """Appends step records to `$LAUNCH_METRICS_DIR/rank$RANK.jsonl` (a no-op outside a launch).

        metrics = MetricsWriter()
        for step, batch in enumerate(loader):
            with metrics.step(samples=len(batch)):
                train_step(batch)
    """

    def __init__(self, directory: str | None = None, rank: int | None = None) -> None:
        directory = directory if directory is not None else os.environ.get(contract.METRICS_DIR)
        rank = rank if rank is not None else int(os.environ.get("RANK", "0"))
        self.path = Path(directory) / contract.metrics_file(rank) if directory else None
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

    def record(self, **fields: Any) -> None:
        """Appends a record that is not a step (an evaluation, say): kept in the file, left out of step statistics."""
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(fields) + "\n")

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
