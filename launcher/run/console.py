"""What a run shows on the terminal: whole lines from several threads, never interleaved, and
the run's live status from the nodes' `progress` events (`launcher.node.progress`): elapsed time,
steps, samples/s over all ranks, the slowest rank, and an ETA when the job's metrics give
`total_steps`. On a terminal the status is one line redrawn in place; otherwise a plain line now and
then."""

from __future__ import annotations

import sys
import threading
import time
from typing import BinaryIO

from ..results.terminal import SafeOut, printable

TTY_EVERY_S = 1.0
PLAIN_EVERY_S = 30.0


class Board:
    """The latest progress of every rank, as the nodes sent it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ranks: dict[int, dict] = {}
        self.waiting: str | None = None  # why the nodes have not started (a scheduler's queue)

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
        if self.waiting and not ranks:
            parts.append(self.waiting)
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


class Console:
    """Rank lines to `out` and the launcher's own lines to `notes` (the same stream for an attached
    run; stderr for `launch logs`), whole lines from several threads, never interleaved, made
    `printable`; on a terminal, a status line kept below them."""

    def __init__(self, out: BinaryIO | None = None, notes: BinaryIO | None = None) -> None:
        self.out = out or sys.stdout.buffer
        self.notes = notes or self.out
        self.lock = threading.Lock()
        self.colour = SafeOut(self.out).colour
        self.live = SafeOut(self.notes).colour  # the status line is redrawn in place
        self.status: bytes | None = None

    def set_status(self, text: str | None) -> None:
        with self.lock:
            self.status = printable(text.encode()).rstrip(b"\n") if text else None
            self._write(self.notes, b"\r\x1b[K" + (self.status or b""))

    def write_line(self, line: bytes, stream: BinaryIO | None = None) -> None:
        stream = stream or self.out
        line = printable(line, self.colour if stream is self.out else self.live)
        with self.lock:
            if self.status is None:
                self._write(stream, line)
            elif stream is self.notes:  # the line goes where the status was, the status below it
                self._write(stream, b"\r\x1b[K" + line + self.status)
            else:
                self._write(self.notes, b"\r\x1b[K")
                self._write(stream, line)
                self._write(self.notes, self.status)

    def say(self, text: str) -> None:
        """One of the launcher's own lines."""
        self.write_line(text.encode(), self.notes)

    @staticmethod
    def _write(stream: BinaryIO, data: bytes) -> None:
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, or the terminal gone (SIGHUP)
            pass


class StatusLine:
    """Shows the board on the console: redrawn in place on a terminal, a plain line otherwise."""

    def __init__(self, board: Board, console: Console, started: float) -> None:
        """`started`: when the run started, in wall-clock seconds (time.time())."""
        self.board, self.console, self.started = board, console, started
        self.last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        every = TTY_EVERY_S if self.console.live else PLAIN_EVERY_S
        if now - self.last < every:
            return
        self.last = now
        text = self.board.line(time.time() - self.started)
        if self.console.live:
            self.console.set_status(text)
        else:
            self.console.say(f"launch: progress: {text}")

    def close(self) -> None:
        if self.console.live:
            self.console.set_status(None)
