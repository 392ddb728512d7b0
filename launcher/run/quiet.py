"""The quiet-run warning: a hung collective gives no error, only silence."""

from __future__ import annotations

import time

from ..record.rundir import RunPaths
from .console import Console
from .events import RunView


class QuietWatch:
    """Says when no rank has printed a line or written a metric for `after_s`, and again each `after_s`
    more: a hung collective gives no error, only silence. Metrics count from the nodes' progress
    events, and from the metrics files here (one-box runs, whose events may lag). The silence counts
    from the first rank's start: before it, torchrun may wait long for its peers, and says nothing
    (the job's `timeout` still ends such a run). Time is `view.clock`."""

    def __init__(self, after_s: float | None, view: RunView, paths: RunPaths, console: Console) -> None:
        self.after_s, self.view, self.paths, self.console = after_s, view, paths, console
        self.said_at = 0.0  # the silence (seconds) last warned about
        self.checked = float("-inf")  # when the silence was last measured

    def last_sign(self, now: float) -> float | None:
        """When a rank last started, printed a line or wrote a metric; None while no rank has started."""
        last = self.view.last_rank_line if self.view.first_rank_at is not None else None
        try:  # metrics files here (one-box runs): a job may step for hours without printing
            newest = max((p.stat().st_mtime for p in self.paths.metrics_dir.iterdir()), default=None)
        except OSError:
            newest = None
        if newest is not None:  # a metrics file is written by a started rank
            seen = now - (time.time() - newest)
            last = seen if last is None else max(last, seen)
        return last

    def tick(self) -> None:
        now = self.view.clock()
        if not self.after_s or now - self.checked < 1.0:
            return
        self.checked = now
        last = self.last_sign(now)
        if last is None:  # no rank yet: torchrun's start-up and rendezvous, however long, is not a quiet run
            return
        silent = now - last
        if silent < self.after_s:
            self.said_at = 0.0
            return
        if silent >= self.said_at + self.after_s:
            self.said_at = silent - silent % self.after_s
            self.console.say(f"launch: warning: no rank has printed a line or written a metric for {_minutes(silent)}; "
                             "a hung collective or a stuck data loader says nothing (set `timeout` in the job to end such "
                             "a run; `hang_warning` sets when this is said)")


def _minutes(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes else f"{int(seconds)} s"
