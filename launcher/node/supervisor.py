"""The node supervisor: the first process of a node's part of a run, with torchrun as its child.

    python -m launcher.node.supervisor --node-dir DIR --host NAME [options] -- TORCHRUN ARGV...

It makes a node's part end on its own, whatever happens to the launcher:
- with `--lease S` (attached runs) it stops torchrun when the launcher has not renewed the node's
  lease file (`contract.LEASE_FILE`, its mtime) for S seconds: the launcher was killed, the laptop
  slept, or the network between them was cut;
- with `--peers` the supervisors of one run keep in touch over TCP: node 0's listens on
  `--coordinator ADDR:PORT`, the others connect to it and exchange a beat every second. When one
  node's torchrun fails, or a node stops answering for `--peer-timeout` seconds (its host lost),
  every node is stopped: fail-fast done on the nodes, with or without a launcher (`mesh`);
- with `--max-restarts N`, when a node's torchrun fails, every node stops its torchrun, waits
  until all have, and starts the next attempt (`contract.ATTEMPT` tells the ranks which), up to N
  times: the whole group restarts on every host, with the same node ranks;
- on SIGTERM/SIGINT/SIGHUP (`launch stop`, `docker kill`) it stops torchrun too.
Stopping is SIGTERM to torchrun's process group, then SIGKILL to every process descended from the
supervisor (its subreaper) after `--grace` s. It writes every line of torchrun's output to the node's
output file (and stdout with `--echo`), torchrun's own lines to its log, the node's state to
`contract.NODE_STATUS`. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from . import contract, workspace
from .output import NodeOutput, open_or_null
from .progress import Progress
from .procs import become_subreaper, descendants, describe_process, die_with_parent, kill_after_grace, kill_all, signal_group

if TYPE_CHECKING:
    from .mesh import Mesh

PROGRESS_S = 3.0  # how often the ranks' progress is read from their metrics files and sent
LEASE_GRACE_S = 5.0  # when the lease ran out nobody waits for the ranks: a shorter grace period


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_dir, self.metrics_dir = contract.node_dirs(args.node_dir, args.host)
        self.lock = threading.Lock()  # the node's state; never held while writing
        self.changed = threading.Condition(self.lock)  # a restart was asked for, or may begin
        self.out = NodeOutput(args.host, args.echo)
        self.stop_reason: str | None = None
        self.cause: str | None = None  # why the node was stopped: one of contract.STOP_CAUSES
        self.lost: str | None = None  # the host whose loss stopped the node, when one did
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None
        self.signaled = False  # the current torchrun was told to end (a stop or a restart)
        self.started = time.time()
        self.attempt = 0
        self.restart_to = 0  # the attempt the group is moving to (> attempt while restarting)
        self.restart_reason = ""
        self.go_to = 0  # the attempt every node is ready for
        self.rank_failure: str | None = None  # the first rank that failed on its own in this attempt
        self.mesh: Mesh | None = None
        self.killed: list[dict] = []  # processes that outlived the grace period and were killed
        self.resumed: dict[str, int] = {}  # files that came from the run resumed from, by kind

    # ---- output and state
    def emit(self, line: bytes, agent_log=None) -> None:
        self.out.emit(line, agent_log)

    def event(self, kind: str, **fields) -> None:
        self.emit(contract.event_line(kind, host=self.args.host, node_rank=self.args.node_rank, **fields))

    def write_status(self, state: str, **fields) -> None:
        record = {
            "host": self.args.host,
            "node_rank": self.args.node_rank,
            "state": state,
            "pid": os.getpid(),
            "start_time": self.started,
            "restarts": self.attempt,
            **fields,
        }
        contract.write_json_file(os.path.join(self.log_dir, contract.NODE_STATUS), record)

    # ---- stopping, restarting
    def stop(self, cause: str, reason: str, lost: str | None = None) -> None:
        """Stop the node's part (once): SIGTERM to torchrun now, SIGKILL to what is left later."""
        with self.lock:
            if self.stopping.is_set():
                return
            if self.cause != contract.STOPPED_BY_PREEMPTION:  # the scheduler's kill after its warning: still that
                self.cause, self.stop_reason, self.lost = cause, reason, lost
            self.stopping.set()
            self.changed.notify_all()
        self._end_child(LEASE_GRACE_S if cause == contract.STOPPED_BY_LEASE else self.args.grace)
        self.event(contract.EVENT_STOPPING, cause=cause, reason=reason, lost=lost)

    def request_restart(self, attempt: int, reason: str) -> None:
        """The group moves to `attempt`: end this node's torchrun of the current one."""
        with self.lock:
            if attempt <= self.restart_to:
                return
            self.restart_to, self.restart_reason = attempt, reason
            self.changed.notify_all()
        self._end_child()

    def go(self, attempt: int) -> None:
        with self.lock:
            self.go_to = max(self.go_to, attempt)
            self.changed.notify_all()

    def _end_child(self, grace: float | None = None) -> None:
        """SIGTERM to torchrun's process group now (before the stop is announced), SIGKILL to what
        is left after the grace period, from a thread of its own."""
        child = self.child
        if child is not None and child.poll() is None:
            self.signaled = True
            signal_group(child.pid, signal.SIGTERM)
            threading.Thread(target=self._kill_after_grace, args=(child, grace), daemon=True).start()

    def _kill_after_grace(self, child: subprocess.Popen, grace: float | None = None) -> None:
        """After the grace period, SIGKILL every process below the supervisor (torchrun, the ranks,
        and whatever they left: the supervisor is their subreaper)."""
        grace = self.args.grace if grace is None else grace
        kill_after_grace(lambda: self._kill_left(child, grace),
                         lambda: child.poll() is None or bool(descendants(os.getpid())), grace, poll_s=0.1)

    def _kill_left(self, child: subprocess.Popen, grace: float) -> None:
        """SIGKILL what is left of `child`'s attempt (unless a later attempt has begun), and say which
        processes had to be killed."""
        if self.child is not child and not self.stopping.is_set():
            return
        pids = descendants(os.getpid())
        if not pids:
            return
        described = [describe_process(pid) for pid in pids]
        with self.lock:  # before the kill: the node's end, which the kill lets come, reports these
            self.killed += described
        kill_all(pids)
        self.event(contract.EVENT_KILLED, grace=grace, processes=described)

    def _on_preempt(self, signum: int, _frame) -> None:
        threading.Thread(target=self._preempted, args=(signum,), daemon=True).start()  # as _on_signal: no lock here

    def _preempted(self, signum: int) -> None:
        """The scheduler's warning: the ranks save and end (torchrun passes it on); the node ends stopped."""
        with self.lock:
            first = self.cause is None
            if first:
                self.cause = contract.STOPPED_BY_PREEMPTION
                self.stop_reason = f"{signal.Signals(signum).name} received: the scheduler's time limit or a preemption is near"
            self.signaled = True
        if self.args.forward_preempt and self.child is not None and self.child.poll() is None:
            os.kill(self.child.pid, signum)  # torchrun alone: it hands the signal to its ranks
        if first:
            self.event(contract.EVENT_STOPPING, cause=self.cause, reason=self.stop_reason)

    def _on_signal(self, signum: int, _frame) -> None:
        # not here: the main thread may hold a lock this handler interrupted
        threading.Thread(target=self.stop, args=(contract.STOPPED_BY_SIGNAL, f"{signal.Signals(signum).name} received"),
                         daemon=True).start()

    # ---- watchers
    def _watch_lease(self) -> None:
        path = os.path.join(self.args.node_dir, contract.LEASE_FILE)
        while not self.stopping.wait(0.5):
            try:
                age = time.time() - os.stat(path).st_mtime
            except OSError:
                age = float("inf")
            if age > self.args.lease:
                self.stop(contract.STOPPED_BY_LEASE, f"the launcher stopped renewing its lease {self.args.lease:g} s ago "
                          "(it was killed, or cut off from this host)")
                return

    def _watch_progress(self) -> None:
        """Every PROGRESS_S, what the ranks' metrics files say of their progress, as an event line."""
        progress, last = Progress(self.metrics_dir), None
        while not self.stopping.wait(PROGRESS_S):
            found = progress.read()
            if found and found != last:
                self.event(contract.EVENT_PROGRESS, ranks=found)
                last = found

    def _watch_timeout(self) -> None:
        if not self.stopping.wait(self.args.timeout):
            self.stop(contract.STOPPED_BY_TIMEOUT, f"timed out after {self.args.timeout:g} s")

    def _start_watching(self) -> None:
        """The node's output, signals, the mesh, the lease and the timeout: before anything is copied."""
        if self.args.lease:  # the lease runs from the node's start, whatever the launcher did before
            lease = os.path.join(self.args.node_dir, contract.LEASE_FILE)
            with open(lease, "a"):
                pass
            os.utime(lease, None)
        self.out.open(os.path.join(self.log_dir, contract.NODE_OUTPUT))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if self.args.preempt_signal:
            signal.signal(signal.Signals[self.args.preempt_signal], self._on_preempt)
        self.write_status(contract.RUNNING)  # before the copies: a long one is a node at work, not a lost one
        if self.args.peers > 1:
            from .mesh import Mesh  # here: a node on its own starts its torchrun without it
            self.mesh = Mesh(self)
            self.mesh.start()
        if self.args.lease:
            threading.Thread(target=self._watch_lease, daemon=True).start()
        if self.args.timeout:
            threading.Thread(target=self._watch_timeout, daemon=True).start()

    # ---- the run
    def run(self, argv: list[str]) -> int:
        os.makedirs(self.log_dir, exist_ok=True)
        become_subreaper()
        self.attempt = self.restart_to = self.go_to = workspace.next_attempt(self.log_dir)  # > 0: started again (requeued)
        self._start_watching()
        if self.attempt:
            self.event(contract.EVENT_ATTEMPT, attempt=self.attempt, attempts=self.args.max_restarts + 1,
                       reason="the scheduler requeued the job")
        prepared = self._prepare_workspace()
        self.write_status(contract.RUNNING, resumed=self.resumed)
        threading.Thread(target=self._watch_progress, daemon=True).start()
        code, failed_itself = self._attempts(argv) if prepared else (1, True)
        kept = self._finish_workspace()
        if self.mesh:
            self.mesh.finish(code)
        ended_early = self.stopping.is_set() or code != 0 or self.cause is not None
        state = contract.FAILED if failed_itself else contract.STOPPED if ended_early else contract.SUCCEEDED
        self.event(contract.EVENT_NODE_END, state=state, exit_code=code, cause=self.cause, reason=self.stop_reason,
                   lost=self.lost, restarts=self.attempt)
        with self.lock:
            killed = list(self.killed)
        self.write_status(state, exit_code=code, end_time=time.time(), cause=self.cause, reason=self.stop_reason,
                          lost=self.lost, killed=killed, resumed=self.resumed, kept=kept)
        self.out.close()
        return code

    def _prepare_workspace(self) -> bool:
        """The run's own folder: its checkpoint folder and the ranks' working directory (the code,
        on top of what the run resumed from keeps), entered; False when it cannot be made."""
        if not self.args.state_dir:
            return True
        try:
            self.resumed = workspace.prepare(self.args.state_dir, self.args.code_from, self.args.code_list,
                                             self.args.resume_from, self.args.work_dir)
            os.chdir(workspace.state_paths(self.args.state_dir, self.args.work_dir)[1])
            return True
        except (OSError, ValueError, KeyError) as exc:
            why = f"cannot prepare the run's folder {self.args.state_dir}: {type(exc).__name__}: {str(exc)[:300]}"
            self.emit(contract.agent_prefix(self.args.host) + f"{why}\n".encode())
            self.stop_reason = why
            return False

    def _finish_workspace(self) -> dict[str, int] | None:
        """What the run keeps in its folder, once the unchanged code is out of the working directory;
        None when that cannot be told (the folder is then named as kept)."""
        if not self.args.state_dir:
            return {}
        kept = workspace.finish(self.args.state_dir, self.args.work_dir)
        if kept is None:
            self.emit(contract.agent_prefix(self.args.host) + f"could not tidy the run's folder {self.args.state_dir}; "
                      "it keeps what the run wrote and may keep copies of the code\n".encode())
        return kept

    def _attempts(self, argv: list[str]) -> tuple[int, bool]:
        """Run torchrun, again for every restart of the group; its last exit code, and whether that
        attempt failed on its own (not stopped by this supervisor)."""
        while True:
            self.signaled, self.rank_failure = False, None
            code = self._run_child(argv)
            failed_itself = code != 0 and not self.signaled
            if self.stopping.is_set() or self.cause == contract.STOPPED_BY_PREEMPTION:
                return code, failed_itself
            with self.lock:
                restart_asked = self.restart_to > self.attempt
            if not restart_asked:
                if code == 0 or self.attempt >= self.args.max_restarts:
                    return code, failed_itself
                why = self.rank_failure or f"torchrun on {self.args.host} exited with code {code}"
                if self.mesh is None:
                    self.request_restart(self.attempt + 1, why)
                else:
                    self.mesh.failed(self.attempt, why)
            if not self._next_attempt():
                return code, failed_itself

    def _next_attempt(self) -> bool:
        """Wait until the group may start the attempt it moves to (every node's torchrun ended)."""
        limit = self.args.grace + 2 * self.args.peer_timeout + 30  # every node stops its torchrun in this time
        with self.lock:
            deadline = time.monotonic() + limit
            while self.restart_to <= self.attempt and not self.stopping.is_set() and time.monotonic() < deadline:
                self.changed.wait(1.0)
            target = self.restart_to
        if target > self.attempt:
            if self.mesh is None:
                self.go(target)
            else:
                self.mesh.ready(target)
        with self.lock:
            while self.go_to < target and not self.stopping.is_set() and time.monotonic() < deadline + limit:
                self.changed.wait(1.0)
            ready = target > self.attempt and self.go_to >= target
        if not ready:
            self.stop(contract.STOPPED_FOR_PEER_FAILED, f"the group did not come together for attempt {target + 1} "
                      f"within {limit:g} s")
        with self.lock:
            if self.stopping.is_set():
                return False
            self.attempt = target
            reason = self.restart_reason
        self.event(contract.EVENT_ATTEMPT, attempt=target, attempts=self.args.max_restarts + 1, reason=reason)
        self.write_status(contract.RUNNING)
        return True

    def _run_child(self, argv: list[str]) -> int:
        if self.stopping.is_set():
            return 128 + signal.SIGTERM
        env = dict(os.environ, **{contract.ATTEMPT: str(self.attempt)})
        try:
            child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_torchrun_dies_with_supervisor)
        except OSError as exc:
            self.emit(f"cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
            return 127
        self.child = child
        if self.stopping.is_set() or self.restart_to > self.attempt:  # asked to end while starting
            self._end_child()
        with open_or_null(os.path.join(self.log_dir, contract.AGENT_LOG)) as agent_log:
            assert child.stdout is not None
            for line in iter(lambda: child.stdout.readline(contract.LINE_MAX + 4096), b""):  # a rank's piece and its prefix
                if not line.endswith(b"\n"):
                    line += b"\n"
                event = contract.parse_event(line)
                if event is not None:
                    if (event.get("event") == contract.EVENT_RANK_END and event.get("exit_code") not in (0, None)
                            and not event.get("stopped") and self.rank_failure is None):
                        self.rank_failure = f"rank {event.get('rank')} on {self.args.host} exited with code {event['exit_code']}"
                    self.emit(line)
                elif contract.split_rank_line(line, self.args.host) is not None:
                    self.emit(line)
                else:
                    self.emit(contract.agent_prefix(self.args.host) + line, agent_log)
        code = child.wait()
        code = 128 - code if code < 0 else code
        # what torchrun left behind (a rank that ignored SIGTERM) ends with its attempt
        if descendants(os.getpid()):
            self._kill_after_grace(child)
        return code


def _torchrun_dies_with_supervisor() -> None:
    """torchrun gets SIGTERM if the supervisor itself is killed (SIGKILL, OOM): it stops its ranks."""
    die_with_parent(signal.SIGTERM)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python -m launcher.node.supervisor [options] -- COMMAND [ARG ...]")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="launcher.node.supervisor")
    parser.add_argument("--node-dir", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--peers", type=int, default=1, help="how many nodes the run has")
    parser.add_argument("--coordinator", default="", help="ADDR:PORT of node 0's supervisor")
    parser.add_argument("--peer-timeout", type=float, default=10.0)
    parser.add_argument("--lease", type=float, default=0.0, help="seconds; 0: no lease (a detached run)")
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds; stop the node after them (0: never)")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--max-restarts", type=int, default=0, help="restarts of the whole group on every node")
    parser.add_argument("--state-dir", default="", help="the run's own folder: checkpoints and the working directory")
    parser.add_argument("--work-dir", default="", help="the working directory, where it is not seen inside --state-dir")
    parser.add_argument("--code-from", default="", help="the job's code, copied into the working directory")
    parser.add_argument("--code-list", default="", help="a workdir record naming the files of --code-from that are the code")
    parser.add_argument("--resume-from", default="", help="the folder of the run to resume from (its checkpoints and outputs)")
    parser.add_argument("--echo", action="store_true", help="also write the node's output to stdout")
    parser.add_argument("--preempt-signal", default="", help="a scheduler's warning signal (SIGUSR2): save, end, no restart")
    parser.add_argument("--forward-preempt", action="store_true", help="pass it on to torchrun (Slurm does not)")
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def main(argv: list[str]) -> int:
    args, command = parse_args(argv)
    if not command:
        raise SystemExit("launcher.node.supervisor: no command after --")
    supervisor = Supervisor(args)
    code = supervisor.run(command)  # warned by the scheduler: 0, or srun would end the others while they save
    return 0 if supervisor.cause == contract.STOPPED_BY_PREEMPTION else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
