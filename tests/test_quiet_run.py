"""The quiet-run warning (`hang_warning`): when it is said, on a clock the test moves."""

from __future__ import annotations

import io
from pathlib import Path

from launcher.node import contract
from types import SimpleNamespace

from launcher.record.rundir import RunPaths
from launcher.run.console import Console
from launcher.run.events import RunView
from launcher.run.follow import Follower
from launcher.run.quiet import QuietWatch

WARNING = b"launch: warning: no rank has printed"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(tmp_path: Path, after_s: float = 600.0) -> tuple[Clock, RunView, QuietWatch, io.BytesIO]:
    out, clock = io.BytesIO(), Clock()
    console = Console(out)
    view = RunView(0, clock=clock)
    return clock, view, QuietWatch(after_s, view, RunPaths(tmp_path / "run"), console), out


class Printed:
    """A backend whose one node, `box`, has printed `data`."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_output(self, _node, offset: int) -> bytes:
        return self.data[offset:]


def _follow(view: RunView, watch: QuietWatch, data: bytes) -> None:
    """The follower reads what node `box` printed."""
    plan = SimpleNamespace(nodes=(SimpleNamespace(host="box"),))
    follower = Follower(plan, Printed(data), watch.console, view)  # type: ignore[arg-type]
    follower.drain()
    follower.close()


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
    clock, view, watch, out = _watch(tmp_path)
    _after(clock, watch, 3000)  # a long rendezvous: no rank yet
    view.on_event("a", {"event": "rank-start", "host": "a", "rank": 0, "attempt": 0})
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
    clock, view, watch, out = _watch(tmp_path, after_s=60)
    _after(clock, watch, 500)
    _follow(view, watch, contract.agent_prefix("box") + b"torchrun waits for its peers\n")
    _after(clock, watch, 500)
    assert WARNING not in out.getvalue(), "torchrun's own lines are not a rank's start"
    _follow(view, watch, contract.rank_prefix("box", 0) + b"hello\n")
    _after(clock, watch, 59)
    assert WARNING not in out.getvalue()
    _after(clock, watch, 2)
    assert out.getvalue().count(WARNING) == 1


def test_progress_is_a_sign_of_life(tmp_path: Path) -> None:
    clock, view, watch, out = _watch(tmp_path, after_s=60)
    view.on_event("a", {"event": "progress", "ranks": {"0": {"step": 3, "samples_per_s": 10.0, "step_s": 0.1}}})
    _after(clock, watch, 50)
    view.on_event("a", {"event": "progress", "ranks": {"0": {"step": 4, "samples_per_s": 10.0, "step_s": 0.1}}})
    _after(clock, watch, 50)
    assert WARNING not in out.getvalue()
    _after(clock, watch, 11)
    assert out.getvalue().count(WARNING) == 1


def test_no_warning_when_switched_off(tmp_path: Path) -> None:
    clock, view, watch, out = _watch(tmp_path)
    watch.after_s = None
    view.on_event("a", {"event": "rank-start", "host": "a", "rank": 0, "attempt": 0})
    _after(clock, watch, 10_000)
    assert WARNING not in out.getvalue()
