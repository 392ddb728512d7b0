"""What the nodes' events mean to whoever follows a run: the run's view (its attempt, hosts found
lost, a stop from outside, the ranks' progress, the last sign of life) and, for each event kind
(`launcher.node.contract`), the one function that turns it into the console's words.

An attached launcher and `launch logs --follow` both hand every event to `RunView.on_event`, so
they say the same things in the same words.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..node import contract
from ..results.summary import describe_killed
from .console import Board

Event = dict[str, Any]


class RunView:
    """A run as its events tell it, kept by the follower; read by the watch loop."""

    def __init__(self, max_restarts: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_restarts = max_restarts
        self.clock = clock  # the quiet-run warning's clock (monotonic seconds)
        self.lock = threading.Lock()
        self.current = 0  # the attempt under way (0: the first)
        self.lost: dict[str, str] = {}  # host -> the reason a node gave
        self.stopped: str | None = None  # a node was stopped from outside (`launch stop`, a signal): why
        self.stopping = False  # set once the launcher stops the run itself: nodes' stopping is not news then
        # for the quiet-run warning: when the first rank started (None until one has: torchrun may wait
        # long for its peers before that), and when a rank last started, printed a line or moved its metrics
        self.first_rank_at: float | None = None
        self.last_rank_line = clock()
        self.board = Board()  # the ranks' progress, from the nodes' progress events
        self.before_supervisor: dict[str, list[str]] = {}  # host -> the last lines from before its supervisor ran

    def early_line(self, host: str, line: bytes) -> None:
        """A line a node printed before its supervisor ran (docker, ssh, the shell)."""
        with self.lock:
            kept = self.before_supervisor.setdefault(host, [])
            kept.append(line.decode(errors="replace").rstrip("\n"))
            del kept[:-20]

    def sign_of_life(self) -> None:
        """A rank started, printed a line or moved its metrics: the quiet-run warning counts from now."""
        self.last_rank_line = self.clock()
        if self.first_rank_at is None:
            self.first_rank_at = self.last_rank_line

    def on_event(self, host: str, event: Event) -> str | None:
        """Take in one of `host`'s events; the words to say about it, if any."""
        words = _WORDS.get(str(event.get("event")))
        if words is None:
            return None
        with self.lock:
            return words(self, host, event)


def _rank_start(view: RunView, _host: str, _event: Event) -> None:
    view.sign_of_life()


def _progress(view: RunView, _host: str, event: Event) -> None:
    view.board.update(event.get("ranks"))  # sent when a rank's metrics moved on: a sign of life on any host
    view.sign_of_life()


def _attempt(view: RunView, _host: str, event: Event) -> str | None:
    attempt = _int(event.get("attempt"))
    if attempt <= view.current:  # every node says so: said once
        return None
    view.current = attempt
    total = _int(event.get("attempts")) or view.max_restarts + 1
    return (f"launch: attempt {attempt + 1} of {total} (restart {attempt}): the last attempt ended because "
            f"{event.get('reason')}")


def _killed(_view: RunView, host: str, event: Event) -> str | None:
    return killed_words(host, event.get("grace"), event.get("processes"))


def killed_words(host: str, grace: object, processes: object) -> str | None:
    """What a node had to kill when its part stopped (its `killed` event, or a summary's `killed`)."""
    if not processes or not isinstance(processes, list):
        return None
    grace = f"{grace:g}" if isinstance(grace, (int, float)) else grace
    return f"launch: {host}: killed what outlived the {grace} s grace period: {describe_killed(processes)}"


def _stopping(view: RunView, host: str, event: Event) -> str | None:
    lost = event.get("lost")
    if isinstance(lost, str) and lost and lost not in view.lost:
        view.lost[lost] = f"{host} says: {event.get('reason')}"
    if event.get("cause") == contract.STOPPED_BY_SIGNAL and not view.stopping and view.stopped is None:
        view.stopped = f"{host}: {event.get('reason')}"
    return None if view.stopping else f"launch: {host} is stopping: {event.get('reason')}"


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


# every event kind the launcher reads; rank-end and node-end change nothing here (the follower
# marks a node ended at its node-end)
_WORDS: dict[str, Callable[[RunView, str, Event], str | None]] = {
    contract.EVENT_RANK_START: _rank_start,
    contract.EVENT_PROGRESS: _progress,
    contract.EVENT_ATTEMPT: _attempt,
    contract.EVENT_KILLED: _killed,
    contract.EVENT_STOPPING: _stopping,
}
