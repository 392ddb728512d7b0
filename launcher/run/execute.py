"""Carrying out a plan: start every node, stream its output, stop them all when one fails.

The only module that decides when a run ends. It knows nodes through `Transport` alone.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator

from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, LaunchError
from ..node import contract
from ..plan import STOP_GRACE_S, LaunchPlan, NodePlan
from ..results.outcome import Phases, RunOutcome, RunState
from ..results.summary import describe_killed
from .rundir import RunPaths
from .status import Board, StatusLine
from .terminal import SafeOut, printable
from .transport import NodeProcess, Transport

POLL_S = 0.05
RENEW_EVERY_S = 2.0  # leases are renewed this often: LEASE_S (plan) is several renewals
RENEW_TIMEOUT_S = 5.0  # a renewal that takes longer has failed
LOST_AFTER_S = 10.0  # a host that has not answered a renewal for this long is lost


class Console:
    """Whole lines to the terminal from several threads, never interleaved, made `printable`; on a
    terminal, a status line kept below them."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream or sys.stdout.buffer
        self.lock = threading.Lock()
        self.colour = SafeOut(self.stream).colour
        self.status: bytes | None = None

    def set_status(self, text: str | None) -> None:
        with self.lock:
            self.status = printable(text.encode()).rstrip(b"\n") if text else None
            self._write(b"\r\x1b[K" + (self.status or b""))

    def write_line(self, line: bytes) -> None:
        line = printable(line, self.colour)
        with self.lock:
            if self.status is not None:  # the line goes where the status was, the status below it
                line = b"\r\x1b[K" + line + self.status
            self._write(line)

    def _write(self, data: bytes) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe, or the terminal gone (SIGHUP)
            pass

    def say(self, text: str) -> None:
        self.write_line(text.encode())


class _Interrupt:
    """Turns SIGINT/SIGTERM/SIGHUP (Ctrl-C, kill, the terminal closed) into a flag the watch loop
    reads, so stopping is orderly."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator["_Interrupt"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Attempts:
    """What the nodes' event lines say: restarts (and why), and hosts the nodes found lost."""

    def __init__(self, max_restarts: int, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_restarts = max_restarts
        self.console = console
        self.clock = clock  # the quiet-run warning's clock (monotonic seconds)
        self.lock = threading.Lock()
        self.current = 0
        self.lost: dict[str, str] = {}  # host -> the reason a node gave
        self.stopped: str | None = None  # a node was stopped from outside (`launch stop`, a signal): why
        self.stopping = False  # set by the executor once it stops the run itself
        # for the quiet-run warning: when the first rank started (None until one has: torchrun may wait
        # long for its peers before that), and when a rank last started, printed a line or moved its metrics
        self.first_rank_at: float | None = None
        self.last_rank_line = clock()
        self.board = Board()  # the ranks' progress, from the nodes' progress events
        self.before_supervisor: dict[str, list[str]] = {}  # host -> the last lines from before its supervisor ran

    def early_lines(self, host: str, line: bytes) -> None:
        with self.lock:
            kept = self.before_supervisor.setdefault(host, [])
            kept.append(line.decode(errors="replace").rstrip("\n"))
            del kept[:-20]

    def sign_of_life(self) -> None:
        """A rank started, printed a line or moved its metrics: the quiet-run warning counts from now."""
        self.last_rank_line = self.clock()
        if self.first_rank_at is None:
            self.first_rank_at = self.last_rank_line

    def on_event(self, event: dict) -> None:
        kind = event.get("event")
        with self.lock:
            if kind == "rank-start":
                self.sign_of_life()
            elif kind == "attempt" and int(event.get("attempt") or 0) > self.current:
                self.current = int(event.get("attempt") or 0)
                self.console.say(f"launch: attempt {self.current + 1} of {self.max_restarts + 1} "
                                 f"(restart {self.current}): the last attempt ended because {event.get('reason')}")
            elif kind == "progress":  # sent when a rank's metrics moved on: a sign of life on any host
                self.board.update(event.get("ranks"))
                self.sign_of_life()
            elif kind == "killed" and event.get("processes"):
                self.console.say(f"launch: {event.get('host')}: killed what outlived the {event.get('grace')} s grace period: "
                                 f"{describe_killed(event['processes'])}")
            elif kind == "stopping":
                if event.get("lost") and event["lost"] not in self.lost:
                    self.lost[event["lost"]] = f"{event.get('host')} says: {event.get('reason')}"
                if event.get("cause") == contract.STOPPED_BY_SIGNAL and not self.stopping and self.stopped is None:
                    self.stopped = f"{event.get('host')}: {event.get('reason')}"
                if not self.stopping:
                    self.console.say(f"launch: {event.get('host')} is stopping: {event.get('reason')}")


class Heartbeat:
    """Renews the lease of every node that has started while an attached run goes on, and the run
    directory's own (so that `launch logs --follow` elsewhere can tell the run is watched); tells
    which hosts stopped answering."""

    def __init__(self, transport: Transport, paths: RunPaths) -> None:
        self.transport = transport
        self.paths = paths
        self.last_ok: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.done = threading.Event()
        threading.Thread(target=self._watched, daemon=True).start()

    def add(self, node: NodePlan) -> None:
        """Renew `node`'s lease from now on; its host counts as answering from now."""
        self.last_ok[node.host] = time.monotonic()
        threading.Thread(target=self._renew, args=(node,), daemon=True).start()

    def _renew(self, node: NodePlan) -> None:
        while not self.done.is_set():
            try:
                self.transport.renew(node)
                self.last_ok[node.host] = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - kept as the host's last error
                self.errors[node.host] = str(exc) or type(exc).__name__
            self.done.wait(RENEW_EVERY_S)

    def _watched(self) -> None:
        while not self.done.is_set():
            try:
                self.paths.lease_file.touch()
            except OSError:
                pass
            self.done.wait(RENEW_EVERY_S)

    def silent_for(self, host: str) -> float:
        return time.monotonic() - self.last_ok.get(host, time.monotonic())

    def lost(self) -> dict[str, str]:
        """Hosts that have not answered for LOST_AFTER_S, and why."""
        return {
            host: f"no answer over SSH for {self.silent_for(host):.0f} s ({self.errors.get(host) or 'no reply'})"
            for host in list(self.last_ok) if self.silent_for(host) > LOST_AFTER_S
        }

    def reachable(self, host: str) -> bool:
        """Whether the host answered lately: a healthy one answers every RENEW_EVERY_S, in at most
        the renewal's own time-out."""
        return self.silent_for(host) < RENEW_EVERY_S + RENEW_TIMEOUT_S + 1

    def stop(self) -> None:
        self.done.set()


# a warning every rank and torchrun print on hosts whose own hostname does not resolve: harmless
# (ranks meet at addresses), kept in the logs, not shown on the console
_HARMLESS = re.compile(rb"\[c10d\] The hostname of the client socket cannot be retrieved")


def _pump(node: NodePlan, proc: NodeProcess, paths: RunPaths, console: Console, attempts: Attempts,
          verbose: bool = False) -> None:
    """Rank lines go to the terminal (and, for a lab host, to the rank's log here as they come, so
    `launch logs --follow` shows them live; the complete log collected at the end replaces that
    copy); event lines to `attempts`. torchrun's own lines are in the node's torchrun.log, on the
    terminal only when `verbose` (a failure's summary shows their last ones); what came before the
    node's supervisor (docker, ssh, the shell) is always shown."""
    live: dict[int, BinaryIO | None] = {}
    try:
        for line in proc.lines():
            event = contract.parse_event(line)
            if event is not None:
                attempts.on_event(event)
                continue
            rank_line = contract.split_rank_line(line, node.host)
            if rank_line:
                attempts.sign_of_life()
            if rank_line and not node.is_local:
                _live_copy(*rank_line, node.host, paths, live, console)
            if rank_line:
                if verbose or not _HARMLESS.search(rank_line[1]):
                    console.write_line(line)
            elif line.startswith(contract.agent_prefix(node.host)):
                if verbose:
                    console.write_line(line)
            else:  # what came before the node's supervisor (docker, ssh, the shell)
                console.write_line(contract.agent_prefix(node.host) + line)
                attempts.early_lines(node.host, line)
    finally:
        for fh in live.values():
            if fh is not None:
                try:
                    fh.close()
                except OSError:
                    pass


def _live_copy(rank: int, text: bytes, host: str, paths: RunPaths, live: dict[int, BinaryIO | None], console: Console) -> None:
    """A line into the rank's log here; on a full or read-only disk, said once, and the run goes on
    (the host keeps the whole log, collected at the end if the disk allows)."""
    if rank in live and live[rank] is None:
        return
    try:
        if rank not in live:
            paths.host_logs_dir(host).mkdir(parents=True, exist_ok=True)
            live[rank] = paths.rank_log(host, rank).open("ab", buffering=0)
        live[rank].write(text)  # type: ignore[union-attr]
    except OSError as exc:
        live[rank] = None
        console.say(f"launch: cannot write {paths.rank_log(host, rank)} ({exc.strerror or exc}); rank {rank}'s lines go on "
                    "to the terminal, and its host keeps its whole log")


def execute(
    plan: LaunchPlan,
    transport: Transport,
    paths: RunPaths,
    secrets: dict[str, str],
    console: Console,
    grace_s: float = STOP_GRACE_S,
    hang_warning_s: float | None = None,
    verbose: bool = False,
) -> RunOutcome:
    """Run the plan to its end and return how it ended; every node is stopped and collected.

    A node that cannot be started fails the run like a failing rank: the others are stopped, and
    whatever every node left is still collected (which also removes the run's files from hosts).
    A host that stops answering is lost: the others are stopped, and its files stay on it.
    """
    started = time.monotonic()
    procs: dict[str, NodeProcess] = {}
    readers: list[tuple[str, threading.Thread]] = []
    interrupt = _Interrupt()
    attempts = Attempts(plan.max_restarts, console)
    heartbeat = Heartbeat(transport, paths)
    unreachable: set[str] = set()
    unexpected: list[str] = []  # tracebacks of what the launcher did not expect, from any thread
    phases = Phases()
    with interrupt.installed(), _thread_errors_into(unexpected):
        try:
            with phases.timing("start"):
                outcome = _start_all(plan, transport, secrets, procs, readers, paths, console, attempts, heartbeat, verbose)
            if outcome is None:
                status = StatusLine(attempts.board, console, started)
                try:
                    with phases.timing("run"):
                        outcome = _watch(plan, procs, interrupt, started, heartbeat, attempts, unexpected,
                                         QuietWatch(hang_warning_s, attempts, paths, console), status)
                finally:
                    status.close()
        except Exception as exc:  # noqa: BLE001 - the safety net: whatever it was, every node is stopped
            unexpected.append(traceback.format_exc())
            outcome = _unexpected_outcome(exc)
        finally:
            attempts.stopping = True
            unreachable = {h for h in procs if not heartbeat.reachable(h)}
            with phases.timing("stop"):
                forced = _stop_all({h: p for h, p in procs.items() if h not in unreachable}, grace_s, console)
            heartbeat.stop()
        outcome.forced = forced
        outcome.unexpected = unexpected[0] if unexpected else None
        with attempts.lock:  # a reader that outlived its join may still be adding to it
            outcome.before_supervisor = dict(attempts.before_supervisor)
        for host, reader in readers:
            reader.join(timeout=0 if host in unreachable else grace_s)
        outcome.node_exit_codes = {host: proc.poll() for host, proc in procs.items()}
        with phases.timing("collect"):
            _collect_all(plan, transport, unreachable, outcome, console)
    outcome.wall_time_s = time.monotonic() - started
    outcome.phases = {name: seconds for name, seconds in phases.seconds.items() if name != "stop" or seconds >= 0.05}
    return outcome


def _collect_all(plan: LaunchPlan, transport: Transport, unreachable: set[str], outcome: RunOutcome, console: Console) -> None:
    """Every reachable node's logs and metrics into the run directory; what could not be, said."""
    for node in plan.nodes:
        if node.host in unreachable:
            outcome.collect_errors[node.host] = f"unreachable; its logs stay on it ({node.node_dir})"
        else:
            try:
                transport.collect(node, plan)
                continue
            except Exception as exc:  # noqa: BLE001 - one host's trouble must not lose the others' results
                outcome.collect_errors[node.host] = str(exc) or type(exc).__name__
        console.say(f"launch: could not collect the logs of {node.host}: {outcome.collect_errors[node.host]}")


def start_detached(plan: LaunchPlan, transport: Transport, secrets: dict[str, str], console: Console,
                   grace_s: float = STOP_GRACE_S) -> None:
    """Start every node in the background; when one cannot start, stop and clean up the others."""
    started: list[NodePlan] = []
    for node in plan.nodes:
        try:
            transport.start_detached(node, secrets)
            started.append(node)
        except LaunchError as exc:
            for other in started:
                try:
                    transport.stop(other, grace_s)
                    transport.collect(other, plan)
                except Exception as err:  # noqa: BLE001 - said, and the other nodes go on stopping
                    console.say(f"launch: could not stop node {other.host}: {err}")
            raise LaunchError(f"could not start node {node.host}: {exc}; stopped the {len(started)} node(s) started before it") from None


def _start_all(plan, transport, secrets, procs, readers, paths, console, attempts, heartbeat, verbose) -> RunOutcome | None:
    """Start every node with a reader for its output and its lease renewed; a failed start ends
    the run as failed."""
    for node in plan.nodes:
        try:
            procs[node.host] = transport.start(node, secrets)
            heartbeat.add(node)
        except LaunchError as exc:
            return RunOutcome(RunState.FAILED.value, EXIT_FAILED, 0.0, failed_node=node.host, reason=f"could not start node {node.host}: {exc}")
        reader = threading.Thread(target=_pump, args=(node, procs[node.host], paths, console, attempts, verbose), daemon=True)
        reader.start()
        readers.append((node.host, reader))
    return None


@contextmanager
def _thread_errors_into(found: list[str]) -> Iterator[None]:
    """An exception that ends one of the run's threads is kept in `found` (and ends the run), not
    printed as a traceback."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        found.append("".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _unexpected_outcome(exc: BaseException) -> RunOutcome:
    return RunOutcome(RunState.FAILED.value, EXIT_FAILED, 0.0,
                      reason=f"the launcher hit an unexpected error ({type(exc).__name__}: {exc}); stopped every node")


class QuietWatch:
    """Says when no rank has printed a line or written a metric for `after_s`, and again each `after_s`
    more: a hung collective gives no error, only silence. Metrics count from the nodes' progress
    events, and from the metrics files here (one-box runs, whose events may lag). The silence counts
    from the first rank's start: before it, torchrun may wait long for its peers, and says nothing
    (the job's `timeout` still ends such a run). Time is `attempts.clock`."""

    def __init__(self, after_s: float | None, attempts: Attempts, paths: RunPaths, console: Console) -> None:
        self.after_s, self.attempts, self.paths, self.console = after_s, attempts, paths, console
        self.said_at = 0.0  # the silence (seconds) last warned about
        self.checked = float("-inf")  # when the silence was last measured

    def last_sign(self, now: float) -> float | None:
        """When a rank last started, printed a line or wrote a metric; None while no rank has started."""
        last = self.attempts.last_rank_line if self.attempts.first_rank_at is not None else None
        try:  # metrics files here (one-box runs): a job may step for hours without printing
            newest = max((p.stat().st_mtime for p in self.paths.metrics_dir.iterdir()), default=None)
        except OSError:
            newest = None
        if newest is not None:  # a metrics file is written by a started rank
            seen = now - (time.time() - newest)
            last = seen if last is None else max(last, seen)
        return last

    def tick(self) -> None:
        now = self.attempts.clock()
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


def _watch(plan: LaunchPlan, procs: dict[str, NodeProcess], interrupt: _Interrupt, started: float,
           heartbeat: Heartbeat, attempts: Attempts, unexpected: list[str], quiet: QuietWatch | None = None,
           status: StatusLine | None = None) -> RunOutcome:
    while True:
        if quiet is not None:
            quiet.tick()
        if status is not None:
            status.tick()
        if unexpected:
            last = unexpected[0].strip().splitlines()[-1]
            return RunOutcome(RunState.FAILED.value, EXIT_FAILED, 0.0,
                              reason=f"the launcher hit an unexpected error ({last}); stopped every node")
        if interrupt.signum is not None:
            name = signal.Signals(interrupt.signum).name
            return RunOutcome(RunState.INTERRUPTED.value, EXIT_INTERRUPTED, 0.0, reason=f"{name} received; stopped every node")
        if plan.timeout_s is not None and time.monotonic() - started > plan.timeout_s:
            return RunOutcome(RunState.FAILED.value, EXIT_FAILED, 0.0, reason=f"timed out after {plan.timeout_s:g} s; stopped every node")
        if attempts.stopped:
            return RunOutcome(RunState.STOPPED.value, EXIT_FAILED, 0.0,
                              reason=f"stopped from outside the launcher ({attempts.stopped}: launch stop, or a signal)")
        lost = heartbeat.lost()
        with attempts.lock:
            lost.update({h: why for h, why in attempts.lost.items() if h in procs and h not in lost})
        if lost:
            host, why = next(iter(lost.items()))
            return RunOutcome(RunState.FAILED.value, EXIT_FAILED, 0.0, failed_node=host, lost_host=host,
                              reason=f"host {host} was lost: {why}; stopped every other node")
        codes = {host: proc.poll() for host, proc in procs.items()}
        failed = [host for host, code in codes.items() if code not in (None, 0)]
        if failed:
            return RunOutcome(RunState.FAILED.value, EXIT_FAILED, 0.0, failed_node=failed[0])
        if all(code == 0 for code in codes.values()):
            return RunOutcome(RunState.SUCCEEDED.value, EXIT_OK, 0.0)
        time.sleep(POLL_S)


def _stop_all(procs: dict[str, NodeProcess], grace_s: float, console: Console) -> dict[str, str]:
    """Stop every node still running, all at once, and wait for them; report a node that resists.
    Returns what had to be forced, by host."""
    forced: dict[str, str] = {}

    def stop(host: str, proc: NodeProcess) -> None:
        try:
            what = proc.stop(grace_s)
            if what:
                forced[host] = what
                console.say(f"launch: {host}: {what}")
        except Exception as exc:  # noqa: BLE001 - said on the console, the other nodes go on stopping
            console.say(f"launch: could not stop node {host}: {exc}")

    running = [(host, proc) for host, proc in procs.items() if proc.poll() is None]
    threads = [threading.Thread(target=stop, args=item, daemon=True) for item in running]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=grace_s + 60)
    return dict(forced)
