"""The node supervisor: the first process of a node's part of a run, with torchrun as its child.

    python -m launcher.node.supervisor --node-dir DIR --host NAME [options] -- TORCHRUN ARGV...

It makes a node's part end on its own, whatever happens to the launcher:
- with `--lease S` (attached runs) it stops torchrun when the launcher has not renewed the node's
  lease file (`contract.LEASE_FILE`, its mtime) for S seconds: the launcher was killed, the laptop
  slept, or the network between them was cut;
- with `--peers` the supervisors of one run keep in touch over TCP: node 0's listens on
  `--coordinator ADDR:PORT`, the others connect to it and exchange a beat every second. When one
  node's torchrun fails, or a node stops answering for `--peer-timeout` seconds (its host lost),
  every node is stopped: fail-fast done on the nodes, with or without a launcher;
- on SIGTERM/SIGINT/SIGHUP (`launch stop`, `docker kill`) it stops torchrun too.
Stopping is SIGTERM to torchrun's process group, then SIGKILL to every process descended from the
supervisor (it is their subreaper) after `--grace` seconds. Throughout, it writes every line of
torchrun's output to the node's output file (and to its stdout with `--echo`), torchrun's own lines
to its log, and the node's state to `contract.NODE_STATUS`. Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from . import contract

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
BEAT_S = 1.0
JOIN_TIMEOUT_S = 120.0  # how long node 0 waits for every other node's supervisor to report in


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_dir, _ = contract.node_dirs(args.node_dir, args.host)
        self.lock = threading.Lock()
        self.stop_reason: str | None = None
        self.cause: str | None = None  # why the node was stopped: one of contract.STOP_CAUSES
        self.lost: str | None = None  # the host whose loss stopped the node, when one did
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None
        self.started = time.time()
        self.restarts = 0
        self.echo_ok = args.echo

    # ---- output and state
    def emit(self, line: bytes, agent_log=None) -> None:
        """One line of the node's output: to the node's output file, and to stdout when echoing."""
        with self.lock:
            self.output.write(line)
            if agent_log is not None:
                agent_log.write(line)
            if self.echo_ok:
                try:
                    sys.stdout.buffer.write(line)
                    sys.stdout.buffer.flush()
                except (BrokenPipeError, OSError):
                    self.echo_ok = False  # the launcher is gone: its lease will tell

    def event(self, kind: str, **fields) -> None:
        self.emit(contract.event_line(kind, host=self.args.host, node_rank=self.args.node_rank, **fields))

    def write_status(self, state: str, **fields) -> None:
        record = {
            "host": self.args.host,
            "node_rank": self.args.node_rank,
            "state": state,
            "pid": os.getpid(),
            "start_time": self.started,
            "restarts": self.restarts,
            **fields,
        }
        path = os.path.join(self.log_dir, contract.NODE_STATUS)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)

    # ---- stopping
    def stop(self, cause: str, reason: str, lost: str | None = None) -> None:
        """Stop the node's part (once): SIGTERM to torchrun now, SIGKILL to what is left later."""
        with self.lock:
            if self.stopping.is_set():
                return
            self.cause, self.stop_reason, self.lost = cause, reason, lost
            self.stopping.set()
        self.event("stopping", cause=cause, reason=reason, lost=lost)
        if self.child is not None:
            _signal_group(self.child.pid, signal.SIGTERM)
            threading.Thread(target=self._kill_after_grace, daemon=True).start()

    def _kill_after_grace(self) -> None:
        deadline = time.monotonic() + self.args.grace
        while time.monotonic() < deadline:
            if self.child is not None and self.child.poll() is not None and not _descendants(os.getpid()):
                return
            time.sleep(0.1)
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _on_signal(self, signum: int, _frame) -> None:
        self.stop(contract.STOPPED_BY_SIGNAL, f"{signal.Signals(signum).name} received")

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

    # ---- the run
    def run(self, argv: list[str]) -> int:
        os.makedirs(self.log_dir, exist_ok=True)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if self.args.checkpoint_dir:
            if self.args.fresh_checkpoints:
                _empty(self.args.checkpoint_dir)
            os.makedirs(self.args.checkpoint_dir, exist_ok=True)
        if self.args.lease:  # the lease runs from the node's start, whatever the launcher did before
            with open(os.path.join(self.args.node_dir, contract.LEASE_FILE), "a"):
                pass
            os.utime(os.path.join(self.args.node_dir, contract.LEASE_FILE), None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.output = open(os.path.join(self.log_dir, contract.NODE_OUTPUT), "ab", buffering=0)
        self.write_status(contract.RUNNING)
        mesh = Mesh(self) if self.args.peers > 1 else None
        if mesh:
            mesh.start()
        if self.args.lease:
            threading.Thread(target=self._watch_lease, daemon=True).start()
        code = self._run_child(argv)
        stopped = self.stopping.is_set()  # before the mesh, which stops this node when its own torchrun failed
        if mesh:
            mesh.finish(code)
        if stopped:
            state = contract.STOPPED
        else:
            state = contract.SUCCEEDED if code == 0 else contract.FAILED
        self.event("node-end", state=state, exit_code=code, cause=self.cause, reason=self.stop_reason, lost=self.lost,
                   restarts=self.restarts)
        self.write_status(state, exit_code=code, end_time=time.time(), cause=self.cause, reason=self.stop_reason,
                          lost=self.lost)
        self.output.close()
        return code

    def _run_child(self, argv: list[str]) -> int:
        if self.stopping.is_set():
            return 128 + signal.SIGTERM
        try:
            self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent)
        except OSError as exc:
            self.emit(f"cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
            return 127
        if self.stopping.is_set():  # stopped while starting
            _signal_group(self.child.pid, signal.SIGTERM)
            threading.Thread(target=self._kill_after_grace, daemon=True).start()
        with open(os.path.join(self.log_dir, contract.AGENT_LOG), "ab", buffering=0) as agent_log:
            assert self.child.stdout is not None
            for line in iter(self.child.stdout.readline, b""):
                if not line.endswith(b"\n"):
                    line += b"\n"
                event = contract.parse_event(line)
                if event is not None:
                    if event.get("event") == "rank-start":
                        self.restarts = max(self.restarts, int(event.get("attempt") or 0))
                    self.emit(line)
                elif contract.split_rank_line(line, self.args.host) is not None:
                    self.emit(line)
                else:
                    self.emit(contract.agent_prefix(self.args.host) + line, agent_log)
        code = self.child.wait()
        code = 128 - code if code < 0 else code
        # what torchrun left behind (a rank that ignored SIGTERM) ends with the node
        if _descendants(os.getpid()):
            self._kill_after_grace()
        return code


class Mesh:
    """The supervisors of one run in touch: node 0 coordinates, the others report to it."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        host, _, port = sup.args.coordinator.rpartition(":")
        self.address = (host, int(port))
        self.members: dict[int, dict] = {}  # node rank -> {"host", "conn", "last", "ended"}
        self.coordinator_host = host  # node 0's name, once it has said it
        self.mlock = threading.Lock()
        self.conn: socket.socket | None = None
        self.ended = threading.Event()

    @property
    def is_coordinator(self) -> bool:
        return self.sup.args.node_rank == 0

    def start(self) -> None:
        target = self._coordinate if self.is_coordinator else self._report
        threading.Thread(target=target, daemon=True).start()

    # ---- node 0
    def _coordinate(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(self.address)
        except OSError as exc:
            self.sup.stop(contract.STOPPED_FOR_PEER_FAILED, f"cannot listen on {self.address[0]}:{self.address[1]} for the other nodes: {exc.strerror or exc}")
            return
        server.listen(64)
        server.settimeout(0.5)
        started = time.monotonic()
        while not self.ended.is_set():
            try:
                conn, _ = server.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
            except socket.timeout:
                pass
            except OSError:
                break
            now = time.monotonic()
            with self.mlock:
                members = dict(self.members)
            for rank, m in members.items():
                if m["ended"] is None and now - m["last"] > self.sup.args.peer_timeout:
                    self._stop_all(contract.STOPPED_FOR_PEER_LOST, f"node {rank} ({m['host']}) stopped answering for "
                                   f"{self.sup.args.peer_timeout:g} s", lost=m["host"])
            if len(members) < self.sup.args.peers - 1 and now - started > JOIN_TIMEOUT_S:
                self._stop_all(contract.STOPPED_FOR_PEER_LOST, f"only {len(members)} of {self.sup.args.peers - 1} other node(s) reported in "
                               f"within {JOIN_TIMEOUT_S:g} s")
            if self.sup.stopping.is_set():
                self._broadcast(f"stop {self.sup.cause} {self.sup.stop_reason}")
            self._beat_members()
        server.close()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        rank = None
        try:
            conn.settimeout(self.sup.args.peer_timeout)
            hello = reader.readline().decode().split()
            if len(hello) != 3 or hello[0] != "hello" or not hello[1].isdigit():
                conn.close()
                return
            rank, host = int(hello[1]), hello[2]
            with self.mlock:
                self.members[rank] = {"host": host, "conn": conn, "last": time.monotonic(), "ended": None}
            self._send(conn, f"node0 {self.sup.args.host}")
            if self.sup.stopping.is_set():
                self._send(conn, f"stop {self.sup.cause} {self.sup.stop_reason}")
            for raw in reader:
                words = raw.decode(errors="replace").split(None, 1)
                with self.mlock:
                    self.members[rank]["last"] = time.monotonic()
                if words and words[0] == "end":
                    code = int(words[1]) if len(words) > 1 and words[1].strip().lstrip("-").isdigit() else 1
                    with self.mlock:
                        self.members[rank]["ended"] = code
                    if code != 0:
                        self._stop_all(contract.STOPPED_FOR_PEER_FAILED, f"node {rank} ({host}) failed with exit code {code}")
                    return
        except OSError:
            pass
        if rank is not None:
            with self.mlock:
                member = self.members[rank]
            if member["ended"] is None:
                self._stop_all(contract.STOPPED_FOR_PEER_LOST, f"lost node {rank} ({member['host']}): its connection dropped",
                               lost=member["host"])

    def _stop_all(self, cause: str, reason: str, lost: str | None = None) -> None:
        self.sup.stop(cause, reason, lost)
        self._broadcast(f"stop {self.sup.cause} {self.sup.stop_reason}")

    def _broadcast(self, message: str) -> None:
        with self.mlock:
            conns = [m["conn"] for m in self.members.values() if m["ended"] is None]
        for conn in conns:
            self._send(conn, message)

    def _beat_members(self) -> None:
        now = time.monotonic()
        if now - getattr(self, "_last_beat", 0.0) >= BEAT_S:
            self._last_beat = now
            self._broadcast("beat")

    # ---- nodes 1..N-1
    def _report(self) -> None:
        started = time.monotonic()
        while self.conn is None and not self.ended.is_set():
            try:
                self.conn = socket.create_connection(self.address, timeout=5)
            except OSError:
                if time.monotonic() - started > JOIN_TIMEOUT_S:
                    self.sup.stop(contract.STOPPED_FOR_PEER_LOST, f"cannot reach node 0's supervisor at {self.address[0]}:{self.address[1]}",
                                  lost=self.coordinator_host)
                    return
                time.sleep(0.5)
        conn = self.conn
        if conn is None:
            return
        self._send(conn, f"hello {self.sup.args.node_rank} {self.sup.args.host}")
        threading.Thread(target=self._beat_coordinator, args=(conn,), daemon=True).start()
        conn.settimeout(self.sup.args.peer_timeout)
        reader = conn.makefile("rb")
        try:
            for raw in reader:
                words = raw.decode(errors="replace").rstrip("\n").split(None, 1)
                if words and words[0] == "node0" and len(words) > 1:
                    self.coordinator_host = words[1]
                if words and words[0] == "stop":
                    cause, _, reason = (words[1] if len(words) > 1 else "").partition(" ")
                    self.sup.stop(cause if cause in contract.STOP_CAUSES else contract.STOPPED_FOR_PEER_FAILED,
                                  reason or "node 0 asked every node to stop")
        except OSError:
            pass
        if not self.ended.is_set():
            self.sup.stop(contract.STOPPED_FOR_PEER_LOST, f"lost node 0 ({self.coordinator_host}): no word from it for "
                          f"{self.sup.args.peer_timeout:g} s", lost=self.coordinator_host)

    def _beat_coordinator(self, conn: socket.socket) -> None:
        while not self.ended.wait(BEAT_S):
            if not self._send(conn, "beat"):
                return

    def _send(self, conn: socket.socket, message: str) -> bool:
        try:
            conn.sendall(message.encode() + b"\n")
            return True
        except OSError:
            return False

    def finish(self, code: int) -> None:
        """The node's torchrun ended: tell the others; node 0 waits for every node to end."""
        if self.is_coordinator:
            if code != 0 and not self.sup.stopping.is_set():
                self._stop_all(contract.STOPPED_FOR_PEER_FAILED, f"node 0 ({self.sup.args.host}) failed with exit code {code}")
            while True:  # every member ends, or stops answering (which the loop above notices)
                with self.mlock:
                    open_members = [m for m in self.members.values() if m["ended"] is None]
                    joined = len(self.members)
                if not open_members and (joined >= self.sup.args.peers - 1 or self.sup.stopping.is_set()):
                    break
                time.sleep(0.2)
            self.ended.set()
        else:
            self.ended.set()
            if self.conn is not None:
                self._send(self.conn, f"end {code}")
                self.conn.close()


def _die_with_parent() -> None:
    """torchrun gets SIGTERM if the supervisor itself is killed (SIGKILL, OOM): it stops its ranks."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(root: int) -> list[int]:
    """Every live process below `root` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _empty(folder: str) -> None:
    """Remove what `folder` holds, not the folder (it may be a mount point)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


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
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--checkpoint-dir", default="")
    parser.add_argument("--fresh-checkpoints", action="store_true")
    parser.add_argument("--echo", action="store_true", help="also write the node's output to stdout")
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def main(argv: list[str]) -> int:
    args, command = parse_args(argv)
    if not command:
        raise SystemExit("launcher.node.supervisor: no command after --")
    return Supervisor(args).run(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
