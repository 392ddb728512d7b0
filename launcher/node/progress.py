"""How far a node's ranks are, from the metrics files they write (standard library only).

The node supervisor reads the new lines of `$LAUNCH_METRICS_DIR/rank<R>.jsonl` (or, for a rank
that writes none, the launcher's own `rank<R>.auto.jsonl`) every few seconds and sends what it
found as a `progress` event line: per rank, the last step, the recent samples per second and
step time, and `total_steps` when the job's records carry it. The launcher turns the events of
every node into one status line.
"""

from __future__ import annotations

import json
import os
from collections import deque

from . import contract

RECENT = 20  # steps the recent rates are taken over


class RankProgress:
    def __init__(self) -> None:
        self.offset = 0
        self.step = -1
        self.total: int | None = None
        self.recent: deque[tuple[float, float]] = deque(maxlen=RECENT)  # (samples, step_time_s)

    def feed(self, record: dict) -> None:
        try:
            step, samples, seconds = int(record["step"]), float(record["samples"]), float(record["step_time_s"])
        except (KeyError, TypeError, ValueError):
            return
        if seconds > 0 and samples >= 0:
            self.step = max(self.step, step)
            self.recent.append((samples, seconds))
        total = record.get("total_steps")
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            self.total = total

    def summary(self) -> dict | None:
        if not self.recent:
            return None
        samples = sum(s for s, _ in self.recent)
        seconds = sum(t for _, t in self.recent)
        return {"step": self.step, "samples_per_s": round(samples / seconds, 3), "step_s": round(seconds / len(self.recent), 6),
                "total_steps": self.total}


class Progress:
    """Reads a node's metrics files incrementally."""

    def __init__(self, metrics_dir: str) -> None:
        self.metrics_dir = metrics_dir
        self.ranks: dict[tuple[int, bool], RankProgress] = {}  # (rank, measured by launch) -> progress

    def read(self) -> dict[str, dict]:
        """Per rank (as text, for JSON): its progress; the job's own records win over measured ones."""
        try:
            names = os.listdir(self.metrics_dir)
        except OSError:
            return {}
        for name in names:
            for auto, suffix in ((False, ".jsonl"), (True, ".auto.jsonl")):
                parsed = contract.parse_rank_file(name, suffix)
                if parsed is None or parsed[1] is not None or (not auto and name.endswith(".auto.jsonl")):
                    continue
                self._read_file(os.path.join(self.metrics_dir, name), self.ranks.setdefault((parsed[0], auto), RankProgress()))
        found: dict[str, dict] = {}
        for (rank, auto), progress in sorted(self.ranks.items(), key=lambda item: item[0][1], reverse=True):
            summary = progress.summary()
            if summary is not None:
                found[str(rank)] = summary  # measured first, then the job's own over it
        return found

    @staticmethod
    def _read_file(path: str, progress: RankProgress) -> None:
        try:
            with open(path, "rb") as fh:
                fh.seek(progress.offset)
                data = fh.read(1 << 22)
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only
        progress.offset += end
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                progress.feed(record)
