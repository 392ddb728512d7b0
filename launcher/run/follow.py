"""Following a run: every node's output read through its backend from where the follower left off,
turned into what the user sees.

The one place that classifies a node's output. A node's output (`contract.NODE_OUTPUT`) holds
rank lines (`[host/rank] text`), torchrun's own lines (`[host] text`), and events; a node started
attached also streams what came before its supervisor ran (docker, ssh, the shell). Rank lines go to
the console; torchrun's lines only when `verbose` (they stay in the node's torchrun.log; a failure's
summary shows their last ones); events go to the run's view (`launcher.run.events`), which says
what they mean. An attached launcher and `launch logs --follow` use this same follower.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from ..backends.base import Backend
from ..node import contract
from ..plan import LaunchPlan, NodePlan
from ..record.rundir import RunPaths
from .console import Console
from .events import RunView

# a warning every rank and torchrun print on hosts whose own hostname does not resolve: harmless
# (ranks meet at addresses), kept in the logs, not shown on the console
_HARMLESS = re.compile(rb"\[c10d\] The hostname of the client socket cannot be retrieved")
LINE_CAP = contract.LINE_MAX + 4096  # a longer line without a break is shown in pieces
QUEUE_EVERY_S = 2.0  # a run waiting in a scheduler's queue: asked why this often


class Follower:
    """Reads each node's output from its offset on, line by line, until the node's end event."""

    def __init__(self, plan: LaunchPlan, backend: Backend, console: Console, view: RunView,
                 rank: int | None = None, verbose: bool = False, live_logs: RunPaths | None = None) -> None:
        """`rank`: only this rank's lines; `live_logs`: also copy each rank line into the rank's log
        in this run directory as it comes (lab hosts of an attached run: the complete log collected at
        the end replaces that copy, and a lost host leaves at least it)."""
        self.plan, self.backend, self.console, self.view = plan, backend, console, view
        self.rank, self.verbose, self.live_logs = rank, verbose, live_logs
        self.offsets = {n.host: 0 for n in plan.nodes}
        self.partial = {n.host: b"" for n in plan.nodes}
        self.ended: set[str] = set()  # nodes whose end event was read
        self.errors: dict[str, str] = {}  # hosts whose output could not be read, last time asked
        self.logs: dict[tuple[str, int], BinaryIO | None] = {}
        self.pool = ThreadPoolExecutor(max_workers=min(16, len(plan.nodes)) or 1)
        self.asked = 0.0  # when the backend was last asked whether the run waits in a queue

    def poll(self) -> bool:
        """Read what every node not yet ended has added (every host at once: hosts that do not answer
        cost one time-out, not one each) and show it; True when anything came."""
        reading = [n for n in self.plan.nodes if n.host not in self.ended]
        self._waiting()
        came = False
        for node, data in zip(reading, self.pool.map(self._read, reading)):
            if data:
                came = True
                self._take(node, data)
        return came

    def follow_on(self) -> None:
        """The run's nodes start again (a scheduler requeued it): their output is read on, past the
        end events of the attempt before."""
        self.ended.clear()

    def _waiting(self) -> None:
        """While the nodes wait in a scheduler's queue: why, said once each time it changes, and kept
        on the status line."""
        now = time.monotonic()
        if now - self.asked < QUEUE_EVERY_S:
            return
        self.asked = now
        try:
            waiting = self.backend.queued()
        except Exception:  # noqa: BLE001 - the scheduler's answer is asked again next time
            return
        board = self.view.board
        if waiting != board.waiting:
            board.waiting = waiting
            if waiting:
                self.console.say(f"launch: {waiting}")

    def drain(self, limit_s: float | None = None) -> None:
        """Read until no node has more (after the nodes stopped), for at most `limit_s`; a last line
        without a break too."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while self.poll() and (deadline is None or time.monotonic() < deadline):
            pass
        for host, rest in self.partial.items():
            if rest:
                self.partial[host] = b""
                self._line(host, rest + b"\n")

    def _read(self, node: NodePlan) -> bytes:
        try:
            data = self.backend.read_output(node, self.offsets[node.host])
        except Exception as exc:  # noqa: BLE001 - kept: whoever follows decides whether the host is lost
            self.errors[node.host] = str(exc) or type(exc).__name__
            return b""
        self.errors.pop(node.host, None)
        self.offsets[node.host] += len(data)
        return data

    def _take(self, node: NodePlan, data: bytes) -> None:
        lines = (self.partial[node.host] + data).split(b"\n")
        rest = lines.pop()
        while len(rest) > LINE_CAP:
            lines.append(rest[:LINE_CAP])
            rest = rest[LINE_CAP:]
        self.partial[node.host] = rest
        for line in lines:
            self._line(node.host, line + b"\n")

    def _line(self, host: str, line: bytes) -> None:
        """One line of a node's output, where it belongs."""
        if host in self.ended:
            return
        event = contract.parse_event(line)
        if event is not None:
            words = self.view.on_event(host, event)
            if words:
                self.console.say(words)
            if event.get("event") == contract.EVENT_NODE_END:
                self.ended.add(host)
            return
        rank_line = contract.split_rank_line(line, host)
        if rank_line is not None:
            self.view.sign_of_life()
            if self.live_logs is not None:
                self._live_copy(host, *rank_line)
            if (self.rank is None or rank_line[0] == self.rank) and (self.verbose or not _HARMLESS.search(rank_line[1])):
                self.console.write_line(line)
        elif line.startswith(contract.agent_prefix(host)):
            if self.verbose and self.rank is None:
                self.console.write_line(line)
        else:  # what came before the node's supervisor (docker, ssh, the shell)
            self.view.early_line(host, line)
            if self.rank is None:
                self.console.write_line(contract.agent_prefix(host) + line)

    def _live_copy(self, host: str, rank: int, text: bytes) -> None:
        """A line into the rank's log here; on a full or read-only disk, said once, and the run goes on
        (the host keeps the whole log, collected at the end if the disk allows)."""
        assert self.live_logs is not None
        key = (host, rank)
        if key in self.logs and self.logs[key] is None:
            return
        try:
            if key not in self.logs:
                self.live_logs.host_logs_dir(host).mkdir(parents=True, exist_ok=True)
                self.logs[key] = self.live_logs.rank_log(host, rank).open("ab", buffering=0)
            self.logs[key].write(text)  # type: ignore[union-attr]
        except OSError as exc:
            self.logs[key] = None
            self.console.say(f"launch: cannot write {self.live_logs.rank_log(host, rank)} ({exc.strerror or exc}); "
                             f"rank {rank}'s lines go on to the terminal, and its host keeps its whole log")

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        for fh in self.logs.values():
            if fh is not None:
                try:
                    fh.close()
                except OSError:
                    pass
