"""Carrying out a plan: start every node, stream its output, stop them all when one fails.

The only module that decides when a run ends. It knows nodes through `Transport` alone.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, LaunchError
from ..node import contract
from ..plan import LaunchPlan, NodePlan
from .rundir import RunPaths
from .transport import NodeProcess, Transport

POLL_S = 0.05
STOP_GRACE_S = 10.0


@dataclass
class RunOutcome:
    status: str  # succeeded | failed | interrupted
    exit_code: int
    wall_time_s: float
    node_exit_codes: dict[str, int | None] = field(default_factory=dict)
    failed_node: str | None = None  # the first node seen ending with an error
    reason: str | None = None  # why the launcher ended the run, when it did
    collect_errors: dict[str, str] = field(default_factory=dict)  # host -> why its files are missing


class Console:
    """Whole lines to the terminal from several threads, never interleaved."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream or sys.stdout.buffer
        self.lock = threading.Lock()

    def write_line(self, line: bytes) -> None:
        if not line.endswith(b"\n"):
            line += b"\n"
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                pass

    def say(self, text: str) -> None:
        self.write_line(text.encode())


class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag the watch loop reads, so stopping is orderly."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator["_Interrupt"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _pump(node: NodePlan, proc: NodeProcess, paths: RunPaths, console: Console) -> None:
    """Rank lines (already prefixed by rankexec) go to the terminal; torchrun's own to its log too.

    For a lab host, rank lines also go to the rank's log here as they come, so `launch logs
    --follow` shows them live; the complete log collected at the end replaces that copy.
    """
    agent_prefix = contract.agent_prefix(node.host)
    log_path = paths.agent_log(node.host)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    live: dict[int, BinaryIO] = {}
    try:
        with log_path.open("ab", buffering=0) as agent_log:
            for line in proc.lines():
                rank_line = contract.split_rank_line(line, node.host)
                if rank_line:
                    if not node.is_local:
                        _live_copy(*rank_line, node.host, paths, live)
                    console.write_line(line)
                else:
                    agent_log.write(line)
                    console.write_line(agent_prefix + line)
    finally:
        for fh in live.values():
            fh.close()


def _live_copy(rank: int, text: bytes, host: str, paths: RunPaths, live: dict[int, BinaryIO]) -> None:
    if rank not in live:
        live[rank] = paths.rank_log(host, rank).open("ab", buffering=0)
    live[rank].write(text)


def execute(
    plan: LaunchPlan,
    transport: Transport,
    paths: RunPaths,
    secrets: dict[str, str],
    console: Console,
    grace_s: float = STOP_GRACE_S,
) -> RunOutcome:
    """Run the plan to its end and return how it ended; every node is stopped and collected.

    A node that cannot be started fails the run like a failing rank: the others are stopped, and
    whatever every node left is still collected (which also removes the run's files from hosts).
    """
    started = time.monotonic()
    procs: dict[str, NodeProcess] = {}
    readers: list[threading.Thread] = []
    interrupt = _Interrupt()
    with interrupt.installed():
        try:
            outcome = _start_all(plan, transport, secrets, procs, readers, paths, console)
            if outcome is None:
                outcome = _watch(plan, procs, interrupt, started)
        finally:
            _stop_all(procs, grace_s, console)
        for reader in readers:
            reader.join(timeout=grace_s)
        outcome.node_exit_codes = {host: proc.poll() for host, proc in procs.items()}
        for node in plan.nodes:
            try:
                transport.collect(node)
            except Exception as exc:  # noqa: BLE001 - one host's trouble must not lose the others' results
                outcome.collect_errors[node.host] = str(exc) or type(exc).__name__
                console.say(f"launch: could not collect the logs of {node.host}: {outcome.collect_errors[node.host]}")
    outcome.wall_time_s = time.monotonic() - started
    return outcome


def _start_all(plan, transport, secrets, procs, readers, paths, console) -> RunOutcome | None:
    """Start every node with a reader for its output; a failed start ends the run as failed."""
    for node in plan.nodes:
        try:
            procs[node.host] = transport.start(node, secrets)
        except LaunchError as exc:
            return RunOutcome("failed", EXIT_FAILED, 0.0, failed_node=node.host, reason=f"could not start node {node.host}: {exc}")
        reader = threading.Thread(target=_pump, args=(node, procs[node.host], paths, console), daemon=True)
        reader.start()
        readers.append(reader)
    return None


def _watch(plan: LaunchPlan, procs: dict[str, NodeProcess], interrupt: _Interrupt, started: float) -> RunOutcome:
    while True:
        if interrupt.signum is not None:
            name = signal.Signals(interrupt.signum).name
            return RunOutcome("interrupted", EXIT_INTERRUPTED, 0.0, reason=f"{name} received; stopped every node")
        if plan.timeout_s is not None and time.monotonic() - started > plan.timeout_s:
            return RunOutcome("failed", EXIT_FAILED, 0.0, reason=f"timed out after {plan.timeout_s:g} s; stopped every node")
        codes = {host: proc.poll() for host, proc in procs.items()}
        failed = [host for host, code in codes.items() if code not in (None, 0)]
        if failed:
            return RunOutcome("failed", EXIT_FAILED, 0.0, failed_node=failed[0])
        if all(code == 0 for code in codes.values()):
            return RunOutcome("succeeded", EXIT_OK, 0.0)
        time.sleep(POLL_S)


def _stop_all(procs: dict[str, NodeProcess], grace_s: float, console: Console) -> None:
    """Stop every node still running, all at once, and wait for them; report a node that resists."""

    def stop(host: str, proc: NodeProcess) -> None:
        try:
            proc.stop(grace_s)
        except Exception as exc:  # noqa: BLE001 - said on the console, the other nodes go on stopping
            console.say(f"launch: could not stop node {host}: {exc}")

    running = [(host, proc) for host, proc in procs.items() if proc.poll() is None]
    threads = [threading.Thread(target=stop, args=item) for item in running]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
