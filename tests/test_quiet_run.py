"""The quiet-run warning (`hang_warning`): when it is said, on a clock the test moves."""

from __future__ import annotations

import io
from pathlib import Path

from launcher.node import contract
from launcher.run.execute import Attempts, Console, QuietWatch, _pump
from launcher.run.rundir import RunPaths

WARNING = b"launch: warning: no rank has printed"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(tmp_path: Path, after_s: float = 600.0) -> tuple[Clock, Attempts, QuietWatch, io.BytesIO]:
    out, clock = io.BytesIO(), Clock()
    console = Console(out)
    attempts = Attempts(0, console, clock=clock)
    return clock, attempts, QuietWatch(after_s, attempts, RunPaths(tmp_path / "run"), console), out


def _after(clock: Clock, watch: QuietWatch, seconds: float) -> None:
    clock.now += seconds
    watch.tick()


def test_no_warning_while_no_rank_has_started(tmp_path: Path) -> None:
    """torchrun's start-up and rendezvous can wait for hours; `timeout`, not this warning, bounds it."""
    clock, _, watch, out = _watch(tmp_path)
    for _ in range(10):
        _after(clock, watch, 3600)
    assert WARNING not in out.getvalue()


def test_the_silence_counts_from_the_first_rank_start(tmp_path: Path) -> None:
    clock, attempts, watch, out = _watch(tmp_path)
    _after(clock, watch, 3000)  # a long rendezvous: no rank yet
    attempts.on_event({"event": "rank-start", "host": "a", "rank": 0, "attempt": 0})
    _after(clock, watch, 599)
    assert WARNING not in out.getvalue()
    _after(clock, watch, 2)
    assert out.getvalue().count(WARNING) == 1
    assert b"for 10 min;" in out.getvalue()
    _after(clock, watch, 300)  # not again until as long again has passed
    assert out.getvalue().count(WARNING) == 1
    _after(clock, watch, 300)
    assert out.getvalue().count(WARNING) == 2 and b"for 20 min;" in out.getvalue()


def test_a_rank_line_starts_the_count_and_resets_it(tmp_path: Path) -> None:
    """A node whose rank-start event is missing (or late) still counts from its first rank line."""
    clock, attempts, watch, out = _watch(tmp_path, after_s=60)

    class Lines:
        def __init__(self, lines: list[bytes]) -> None:
            self._lines = lines

        def lines(self):
            return iter(self._lines)

    class Node:
        host, is_local = "box", True

    _after(clock, watch, 500)
    _pump(Node(), Lines([contract.agent_prefix("box") + b"torchrun waits for its peers\n"]), RunPaths(tmp_path / "run"),
          attempts.console, attempts)
    _after(clock, watch, 500)
    assert WARNING not in out.getvalue(), "torchrun's own lines are not a rank's start"
    _pump(Node(), Lines([contract.rank_prefix("box", 0) + b"hello\n"]), RunPaths(tmp_path / "run"), attempts.console, attempts)
    _after(clock, watch, 59)
    assert WARNING not in out.getvalue()
    _after(clock, watch, 2)
    assert out.getvalue().count(WARNING) == 1


def test_progress_is_a_sign_of_life(tmp_path: Path) -> None:
    clock, attempts, watch, out = _watch(tmp_path, after_s=60)
    attempts.on_event({"event": "progress", "ranks": {"0": {"step": 3, "samples_per_s": 10.0, "step_s": 0.1}}})
    _after(clock, watch, 50)
    attempts.on_event({"event": "progress", "ranks": {"0": {"step": 4, "samples_per_s": 10.0, "step_s": 0.1}}})
    _after(clock, watch, 50)
    assert WARNING not in out.getvalue()
    _after(clock, watch, 11)
    assert out.getvalue().count(WARNING) == 1


def test_no_warning_when_switched_off(tmp_path: Path) -> None:
    clock, attempts, watch, out = _watch(tmp_path)
    watch.after_s = None
    attempts.on_event({"event": "rank-start", "host": "a", "rank": 0, "attempt": 0})
    _after(clock, watch, 10_000)
    assert WARNING not in out.getvalue()
