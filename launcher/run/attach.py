"""An attached run: the launcher submits the run, follows it, and stops it when it must.

The only module that decides when an attached run ends: when every node's part has ended, when one
fails, when a host is lost, when the job's time is up, when it is stopped from outside, or when
the launcher gets SIGINT, SIGTERM or SIGHUP (Ctrl-C, kill, the terminal closed). A signal that was
ignored when the launcher started stays ignored (`nohup`, a script's background job): SIGTERM, or
`launch stop`, then ends the run. Meanwhile it holds the lease that ends every node's part when the
launcher dies. It knows nodes through their `Backend` alone.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Iterator

from ..backends.base import Backend
from ..errors import LaunchError
from ..plan import STOP_GRACE_S, LaunchPlan, NodePlan
from ..record.outcome import Phases, RunOutcome, RunState
from ..record.rundir import RunPaths
from .console import Console, StatusLine
from .events import RunView
from .follow import Follower
from .quiet import QuietWatch

POLL_S = 0.05
RENEW_EVERY_S = 2.0  # leases are renewed this often: LEASE_S (plan) is several renewals
RENEW_TIMEOUT_S = 5.0  # a renewal that takes longer has failed
LOST_AFTER_S = 10.0  # a host that has not answered a renewal for this long is lost
REQUEUE_WAIT_S = 60.0  # nodes stopped from outside: how long the scheduler may take to say it requeued the run
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupt:
    """Turns SIGINT/SIGTERM/SIGHUP into a flag the watch loop reads, so stopping is orderly; a
    signal ignored when the launcher started is left ignored."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signum is None:  # the first one is why the run stopped
            self.signum = signum

    @contextmanager
    def installed(self) -> Iterator["Interrupt"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Heartbeat:
    """Renews the lease of every node while an attached run goes on, and the run directory's own (so
    that `launch logs --follow` elsewhere can tell the run is watched); tells which started hosts
    stopped answering."""

    def __init__(self, backend: Backend, paths: RunPaths, nodes: tuple[NodePlan, ...]) -> None:
        self.backend = backend
        self.paths = paths
        self.last_ok: dict[str, float] = {}  # started hosts -> when they last answered
        self.errors: dict[str, str] = {}
        self.done = threading.Event()  # the nodes' leases are no longer renewed
        self.released = threading.Event()  # nor the run directory's: the run is finished
        threading.Thread(target=self._watched, daemon=True).start()
        for node in nodes:  # from before the start: a node that starts late must not miss its lease
            threading.Thread(target=self._renew, args=(node,), daemon=True).start()

    def started(self, node: NodePlan) -> None:
        """The node's part runs: its host counts as answering from now, and must go on answering."""
        self.last_ok[node.host] = time.monotonic()

    def _renew(self, node: NodePlan) -> None:
        while not self.done.is_set():
            try:
                self.backend.renew(node)
                if node.host in self.last_ok:
                    self.last_ok[node.host] = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - kept as the host's last error
                self.errors[node.host] = str(exc) or type(exc).__name__
            self.done.wait(RENEW_EVERY_S)

    def _watched(self) -> None:
        while not self.released.is_set():
            try:
                self.paths.lease_file.touch()
            except OSError:
                pass
            self.released.wait(RENEW_EVERY_S)

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
        """The nodes' leases are no longer renewed (the run's own goes on until `release`)."""
        self.done.set()

    def release(self) -> None:
        """Nobody watches the run from here on."""
        self.done.set()
        self.released.set()


class Attached:
    """One attached run from its submission to its nodes' stop (`run`); `finish` does the rest."""

    def __init__(self, plan: LaunchPlan, backend: Backend, paths: RunPaths, console: Console,
                 hang_warning_s: float | None = None, verbose: bool = False, grace_s: float = STOP_GRACE_S) -> None:
        self.plan, self.backend, self.paths, self.console, self.grace_s = plan, backend, paths, console, grace_s
        self.view = RunView(plan.max_restarts)
        remote = not all(node.is_local for node in plan.nodes)
        self.follower = Follower(plan, backend, console, self.view, verbose=verbose, live_logs=paths if remote else None)
        self.quiet = QuietWatch(hang_warning_s, self.view, paths, console)
        self.unexpected: list[str] = []  # tracebacks of what the launcher did not expect, from any thread
        self.started: set[str] = set()
        self.unreachable: set[str] = set()
        self.heartbeat: Heartbeat | None = None
        self.stopped_seen: float | None = None  # when nodes were first seen stopped from outside
        self.asked = 0.0  # when the backend was last asked whether its scheduler requeued the run

    def run(self, secrets: dict[str, str], phases: Phases, interrupt: Interrupt) -> RunOutcome:
        """Submit, follow until the run must end, stop every node: how it ended (not yet collected).
        `interrupt` is installed by the caller for as long as the run is its (its finish too); the
        run directory's lease is renewed until `release`."""
        began = time.monotonic()
        self.heartbeat = Heartbeat(self.backend, self.paths, self.plan.nodes)
        with _thread_errors_into(self.unexpected):
            try:
                outcome = self._submit(secrets, self.heartbeat, phases)
                if outcome is None:
                    with phases.timing("run"):
                        outcome = self._watch(interrupt, began, self.heartbeat)
            except Exception as exc:  # noqa: BLE001 - the safety net: whatever it was, every node is stopped
                self.unexpected.append(traceback.format_exc())
                outcome = _unexpected_outcome(f"{type(exc).__name__}: {exc}")
            finally:
                self.view.stopping = True
                self.unreachable = {h for h in self.started if not self.heartbeat.reachable(h)}
                with phases.timing("stop"):
                    outcome.forced = self._stop_all()
                self.heartbeat.stop()
            self._last_output()
        outcome.wall_time_s = time.monotonic() - began
        outcome.unexpected = self.unexpected[0] if self.unexpected else None
        with self.view.lock:
            outcome.before_supervisor = dict(self.view.before_supervisor)
        outcome.node_exit_codes = {n.host: self.backend.exit_code(n) for n in self.plan.nodes if n.host in self.started}
        return outcome

    def release(self) -> None:
        """The run is finished: its directory's lease is no longer renewed."""
        if self.heartbeat is not None:
            self.heartbeat.release()

    def _submit(self, secrets: dict[str, str], heartbeat: Heartbeat, phases: Phases) -> RunOutcome | None:
        """Every node started; a failed start ends the run as failed."""
        with phases.timing("start"):
            try:
                self.backend.submit(self.plan, secrets, attached=True)
            except LaunchError as exc:
                return RunOutcome(RunState.FAILED, 0.0, reason=str(exc), failed_node=getattr(exc, "host", None))
        for node in self.plan.nodes:
            self.started.add(node.host)
            heartbeat.started(node)
        return None

    def _watch(self, interrupt: Interrupt, began: float, heartbeat: Heartbeat) -> RunOutcome:
        """Follow the nodes' output in a thread of its own (a terminal that stalls the output must
        not stall this loop: Ctrl-C, the timeout and a lost host are noticed all the same) until
        the run must end."""
        following = threading.Event()
        following.set()
        reader = threading.Thread(target=self._follow, args=(following,), daemon=True)
        reader.start()
        try:
            while True:
                outcome = self._verdict(interrupt, began, heartbeat)
                if outcome is not None:
                    return outcome
                time.sleep(POLL_S)
        finally:
            following.clear()
            reader.join(timeout=self.grace_s)

    def _follow(self, following: threading.Event) -> None:
        status = StatusLine(self.view.board, self.console, time.time())
        try:
            while following.is_set():
                came = self.follower.poll()
                self.quiet.tick()
                status.tick()
                if not came:
                    time.sleep(POLL_S)
        finally:
            status.close()

    def _verdict(self, interrupt: Interrupt, began: float, heartbeat: Heartbeat) -> RunOutcome | None:
        """How the run ends now, or None while it goes on."""
        if self.unexpected:
            return _unexpected_outcome(self.unexpected[0].strip().splitlines()[-1])
        if interrupt.signum is not None:
            name = signal.Signals(interrupt.signum).name
            return RunOutcome(RunState.INTERRUPTED, 0.0, reason=f"{name} received; stopped every node")
        if self.plan.timeout_s is not None and time.monotonic() - began > self.plan.timeout_s:
            return RunOutcome(RunState.FAILED, 0.0, reason=f"timed out after {self.plan.timeout_s:g} s; stopped every node")
        if self.view.stopped:
            again = self._requeued()
            if again is None:  # the scheduler has not said yet whether the run goes on
                return None
            if not again:
                return RunOutcome(RunState.STOPPED, 0.0,
                                  reason=f"stopped from outside the launcher ({self.view.stopped}: launch stop, or a signal)")
            self._follow_on()
        lost = heartbeat.lost()
        with self.view.lock:
            lost.update({h: why for h, why in self.view.lost.items() if h in self.started and h not in lost})
        if lost:
            host, why = next(iter(lost.items()))
            return RunOutcome(RunState.FAILED, 0.0, failed_node=host, lost_host=host,
                              reason=f"host {host} was lost: {why}; stopped every other node")
        codes = {n.host: self.backend.exit_code(n) for n in self.plan.nodes}
        failed = [host for host, code in codes.items() if code not in (None, 0)]
        if failed:
            return RunOutcome(RunState.FAILED, 0.0, failed_node=failed[0])
        if all(code == 0 for code in codes.values()):
            return RunOutcome(RunState.SUCCEEDED, 0.0)
        return None

    def _requeued(self) -> bool | None:
        """Whether the backend's scheduler requeued the run its nodes were stopped in (asked at most
        every second; after REQUEUE_WAIT_S without an answer, it was not)."""
        now = time.monotonic()
        if self.stopped_seen is None:
            self.stopped_seen = now
        if now - self.asked < 1.0:
            return None
        self.asked = now
        again = self.backend.requeued()
        return False if again is None and now - self.stopped_seen > REQUEUE_WAIT_S else again

    def _follow_on(self) -> None:
        """The scheduler requeued the run: its next attempt is followed as the run."""
        with self.view.lock:
            self.view.stopped = None
            self.view.lost.clear()
        self.stopped_seen = None
        self.follower.follow_on()
        self.console.say("launch: the scheduler requeued the run; its nodes start again when it runs it")

    def _stop_all(self) -> dict[str, str]:
        """Stop every reachable node still running, all at once, and wait for them; say what had to
        be forced. Returns it, by host."""
        forced: dict[str, str] = {}

        def stop(node: NodePlan) -> None:
            try:
                what = self.backend.stop(node, self.grace_s)
                if what:
                    forced[node.host] = what
                    self.console.say(f"launch: {node.host}: {what}")
            except Exception as exc:  # noqa: BLE001 - said on the console, the other nodes go on stopping
                self.console.say(f"launch: could not stop node {node.host}: {exc}")

        nodes = [n for n in self.plan.nodes if n.host in self.started and n.host not in self.unreachable]
        threads = [threading.Thread(target=stop, args=(node,), daemon=True) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=self.grace_s + 60)
        return dict(forced)

    def _last_output(self) -> None:
        """What the stopped nodes said last (their end events, their last rank lines), read for at
        most the grace period."""
        deadline = time.monotonic() + self.grace_s
        try:
            for node in self.plan.nodes:
                if node.host in self.started and node.host not in self.unreachable:
                    self.backend.wait_output(node, max(0.0, deadline - time.monotonic()))
            self.follower.drain(max(1.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - kept like any other: the run is still finished
            self.unexpected.append(traceback.format_exc())
        finally:
            self.follower.close()


def _unexpected_outcome(what: str) -> RunOutcome:
    return RunOutcome(RunState.FAILED, 0.0, reason=f"the launcher hit an unexpected error ({what}); stopped every node")


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
