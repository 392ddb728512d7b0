"""The live status of an attached run, from the nodes' `progress` events (`launcher.node.progress`):
elapsed time, steps, samples/s over all ranks, the slowest rank, and an ETA when the job's metrics
give `total_steps`. On a terminal it is one line redrawn in place; otherwise a plain line now and
then."""

from __future__ import annotations

import threading
import time

TTY_EVERY_S = 1.0
PLAIN_EVERY_S = 30.0


class Board:
    """The latest progress of every rank, as the nodes sent it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ranks: dict[int, dict] = {}

    def update(self, ranks: object) -> None:
        if not isinstance(ranks, dict):
            return
        with self.lock:
            for rank, progress in ranks.items():
                if isinstance(progress, dict) and str(rank).isdigit():
                    self.ranks[int(rank)] = progress

    def line(self, elapsed_s: float) -> str:
        with self.lock:
            ranks = dict(self.ranks)
        parts = [f"elapsed {duration(elapsed_s)}"]
        try:
            if ranks:
                done = min(int(p["step"]) for p in ranks.values()) + 1
                totals = {p.get("total_steps") for p in ranks.values()}
                total = totals.pop() if len(totals) == 1 else None
                rate = sum(float(p["samples_per_s"]) for p in ranks.values())
                slowest, worst = max(ranks.items(), key=lambda item: float(item[1]["step_s"]))
                parts.append(f"step {done}" + (f"/{total}" if isinstance(total, int) else ""))
                parts.append(f"{rate:,.1f} samples/s over {len(ranks)} rank(s)")
                parts.append(f"slowest rank {slowest}: {float(worst['step_s']):.3f} s/step")
                if isinstance(total, int) and total >= done:
                    parts.append(f"ETA {duration((total - done) * float(worst['step_s']))}")
            else:
                parts.append("no step metrics yet")
        except (KeyError, TypeError, ValueError):
            parts.append("progress unreadable")
        return " | ".join(parts)


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, sec = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s" if minutes else f"{sec}s"


class StatusLine:
    """Shows the board on the console: redrawn in place on a terminal, a plain line otherwise."""

    def __init__(self, board: Board, console, started: float) -> None:
        self.board, self.console, self.started = board, console, started
        self.last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        every = TTY_EVERY_S if self.console.colour else PLAIN_EVERY_S
        if now - self.last < every:
            return
        self.last = now
        text = self.board.line(now - self.started)
        if self.console.colour:
            self.console.set_status(text)
        else:
            self.console.say(f"launch: progress: {text}")

    def close(self) -> None:
        if self.console.colour:
            self.console.set_status(None)
