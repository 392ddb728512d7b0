"""The node mesh: the supervisors of one run in touch over TCP (standard library only).

Node 0's supervisor listens on `--coordinator ADDR:PORT`; every other node's connects to it, says
hello, and both sides send a beat every second. Over it node 0 stops every node when one fails
or stops answering (fail-fast without a launcher), and restarts the whole group when a node's
torchrun failed and restarts are left: `failed` to node 0, `restart` to all, `ready` from each
once its torchrun ended, then `go` when every node is ready. Every message is one line, written
by `Message.to_line` and read by `Message.from_line`, and nowhere else.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from . import contract

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .supervisor import Supervisor

BEAT_S = 1.0
# A node that finds node 0 silent says so this much later than node 0 would say the same of it:
# where the network parts and both sides can still write their word (a shared folder), node 0's,
# which sees every node, comes first and names the node cut off (itself, when every other node
# went silent at once).
CENTER_FIRST_S = 3 * BEAT_S
JOIN_TIMEOUT_S = 120.0  # how long node 0 waits for every other node's supervisor to report in

# ---- the messages
HELLO, BEAT, FAILED, READY, END = "hello", "beat", "failed", "ready", "end"  # to node 0
NODE0, RESTART, GO, STOP = "node0", "restart", "go", "stop"  # from node 0
_FIELDS = {  # what follows the kind on a message's line, in order
    HELLO: ("number", "host"),  # `hello RANK HOST`: a node reports in
    BEAT: (),  # either way, every BEAT_S
    FAILED: ("number", "reason"),  # `failed ATTEMPT REASON`: its torchrun of ATTEMPT failed, restarts are left
    READY: ("number",),  # `ready ATTEMPT`: its torchrun of the attempt before ATTEMPT has ended
    END: ("number", "cause", "reason"),  # `end CODE [CAUSE REASON]`: its part is over; CAUSE when it was stopped
    NODE0: ("host",),  # `node0 HOST`: node 0's answer to a hello
    RESTART: ("number", "reason"),  # `restart ATTEMPT REASON`: end your torchrun, the group moves to ATTEMPT
    GO: ("number",),  # `go ATTEMPT`: every node is ready, start it
    STOP: ("cause", "reason"),  # `stop CAUSE REASON`: stop the node
}


@dataclass(frozen=True)
class Message:
    kind: str  # one of _FIELDS
    number: int | None = None  # hello: the node rank; failed, ready, restart, go: the attempt; end: the exit code
    host: str = ""  # hello, node0
    cause: str | None = None  # stop, end: one of contract.STOP_CAUSES; None: an `end` not stopped, an unknown cause
    reason: str = ""  # failed, restart, stop, end (stopped)

    def to_line(self) -> bytes:
        values = [getattr(self, name) for name in _FIELDS[self.kind]]
        if self.kind == END and self.cause is None:
            values = values[:1]  # a node that was not stopped says its exit code alone
        words = [self.kind] + [" ".join(str(value).split()) for value in values if value is not None]
        return " ".join(words).rstrip().encode() + b"\n"

    @classmethod
    def from_line(cls, raw: bytes) -> Message | None:
        """The message on a line; None for a line that is none (the line is then ignored)."""
        words = raw.decode(errors="replace").split(None, 1)
        if not words or words[0] not in _FIELDS:
            return None
        kind, rest = words[0], (words[1].strip() if len(words) > 1 else "")
        if kind == HELLO:
            parts = rest.split()
            rank = _number(parts[0]) if len(parts) == 2 else None
            return cls(kind, rank, host=parts[1]) if rank is not None else None
        if kind == NODE0:
            return cls(kind, host=rest) if rest else None
        if kind == END:
            parts = rest.split(None, 2)
            code = _number(parts[0], signed=True) if parts else None
            cause = parts[1] if len(parts) > 1 and parts[1] in contract.STOP_CAUSES else None
            return cls(kind, 1 if code is None else code, cause=cause, reason=parts[2] if cause and len(parts) > 2 else "")
        if kind == STOP:
            cause, _, reason = rest.partition(" ")
            return cls(kind, cause=cause if cause in contract.STOP_CAUSES else None, reason=reason.strip())
        if kind == BEAT:
            return cls(kind)
        attempt, _, reason = rest.partition(" ")
        attempt_number = _number(attempt)
        return cls(kind, attempt_number, reason=reason.strip()) if attempt_number is not None else None


def _number(text: str, signed: bool = False) -> int | None:
    digits = text[1:] if signed and text.startswith("-") else text
    return int(text) if digits.isascii() and digits.isdigit() else None


def _send(conn: socket.socket, message: Message) -> bool:
    try:
        conn.sendall(message.to_line())
        return True
    except OSError:
        return False


@dataclass
class Member:
    """Node 0's view of another node."""

    host: str
    conn: socket.socket
    last: float  # when it was last heard from (time.monotonic)
    ended: int | None = None  # its exit code, once it said `end`


class Mesh:
    """The supervisors of one run in touch: node 0 coordinates, the others report to it."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        host, _, port = sup.args.coordinator.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # IPv6
        self.address = (host, int(port))
        self.members: dict[int, Member] = {}  # node 0: by node rank
        self.coordinator_host = host  # node 0's name, once it has said it
        self.mlock = threading.Lock()
        self.member_ended = threading.Condition(self.mlock)
        self.conn: socket.socket | None = None
        self.ended = threading.Event()
        self.restarting = 0  # node 0: the attempt the group is moving to
        self.said: dict[str, Message] = {}  # node 0: the last `restart` and `go`, for a node that joins late
        self.ready_for: dict[int, set[int]] = {}  # node 0: attempt -> node ranks whose torchrun ended
        self.last_beat = 0.0

    @property
    def is_coordinator(self) -> bool:
        return self.sup.args.node_rank == 0

    def start(self) -> None:
        target = self._coordinate if self.is_coordinator else self._report
        threading.Thread(target=target, daemon=True).start()

    # ---- node 0
    def _coordinate(self) -> None:
        server = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET, socket.SOCK_STREAM)
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
            self._check_members(started)
            if self.sup.stopping.is_set():
                self._broadcast(self._stop_message())
            self._beat_members()
        server.close()

    def _check_members(self, started: float) -> None:
        """Stop the run when a node stopped answering, or not every node reported in in time."""
        now = time.monotonic()
        with self.mlock:
            members = dict(self.members)
        if len(members) < self.sup.args.peers - 1 and now - started > JOIN_TIMEOUT_S:
            self._stop_all(contract.STOPPED_FOR_PEER_LOST, f"only {len(members)} of {self.sup.args.peers - 1} other node(s) reported in "
                           f"within {JOIN_TIMEOUT_S:g} s")
        timeout = self.sup.args.peer_timeout
        live = {rank: m for rank, m in members.items() if m.ended is None}
        silent = {rank: m for rank, m in live.items() if now - m.last > timeout}
        if silent and len(live) >= 2 and all(now - m.last > timeout - 2 * BEAT_S for m in live.values()):
            if len(silent) < len(live):
                return  # every other node goes quiet at once: wait the beats between them
            self._stop_all(contract.STOPPED_FOR_PEER_LOST, f"no word from any of the {len(live)} other nodes for "
                           f"{timeout:g} s: this host's network is cut off", lost=self.sup.args.host)
        for rank, m in silent.items():
            self._stop_all(contract.STOPPED_FOR_PEER_LOST, f"node {rank} ({m.host}) stopped answering for {timeout:g} s", lost=m.host)

    def _serve(self, conn: socket.socket) -> None:
        """One other node's connection: its hello, then its messages until it ends or is lost."""
        reader = conn.makefile("rb")
        rank = None
        try:
            conn.settimeout(self.sup.args.peer_timeout)
            hello = Message.from_line(reader.readline())
            if hello is None or hello.kind != HELLO or hello.number is None:
                conn.close()
                return
            rank = hello.number
            self._welcome(rank, hello.host, conn)
            conn.settimeout(2 * self.sup.args.peer_timeout)  # its silence is judged by _check_members, with the others'
            for raw in reader:
                with self.mlock:
                    self.members[rank].last = time.monotonic()
                message = Message.from_line(raw)
                if message is not None and self._on_message(rank, hello.host, message):
                    return
        except OSError:
            pass
        if rank is not None:
            with self.mlock:
                member = self.members[rank]
            if member.ended is None:
                self._stop_all(contract.STOPPED_FOR_PEER_LOST, f"lost node {rank} ({member.host}): its connection dropped",
                               lost=member.host)

    def _welcome(self, rank: int, host: str, conn: socket.socket) -> None:
        """A node reported in: answer, and tell it of a restart or a stop under way."""
        with self.mlock:
            self.members[rank] = Member(host, conn, time.monotonic())
        _send(conn, Message(NODE0, host=self.sup.args.host))
        with self.mlock:
            said = list(self.said.values())
        for message in said:  # a restart under way when this node joined
            _send(conn, message)
        if self.sup.stopping.is_set():
            _send(conn, self._stop_message())

    def _on_message(self, rank: int, host: str, message: Message) -> bool:
        """Act on a node's message; True when it was its last (`end`)."""
        if message.kind == END:
            self._on_end(rank, host, message)
            return True
        if message.kind == FAILED:
            self._on_failed(message.number, message.reason)
        elif message.kind == READY:
            self._on_ready(rank, message.number)
        return False

    def _on_end(self, rank: int, host: str, message: Message) -> None:
        code = message.number if message.number is not None else 1
        with self.mlock:
            self.members[rank].ended = code
            self.member_ended.notify_all()
            restarting = self.restarting > self.sup.attempt
        if message.cause is not None:  # it was stopped: the others stop alike
            self._stop_all(message.cause, message.reason or f"node {rank} ({host}) stopped")
        elif code != 0:
            self._stop_all(contract.STOPPED_FOR_PEER_FAILED, f"node {rank} ({host}) failed with exit code {code}")
        elif restarting:  # it finished while the others restart: the group cannot come together
            self._stop_all(contract.STOPPED_FOR_PEER_FAILED, f"node {rank} ({host}) ended while the group restarted")

    def _on_failed(self, attempt: int, reason: str) -> None:
        """A node's torchrun of `attempt` failed: the whole group moves to the next attempt."""
        with self.mlock:
            if attempt + 1 <= self.restarting:
                return  # that restart is under way already
            if attempt >= self.sup.args.max_restarts or any(m.ended is not None for m in self.members.values()):
                restart = False
            else:
                restart, self.restarting = True, attempt + 1
        if not restart:
            self._stop_all(contract.STOPPED_FOR_PEER_FAILED, reason)
            return
        message = Message(RESTART, attempt + 1, reason=reason)
        with self.mlock:
            self.said[RESTART] = message
        self._broadcast(message)
        self.sup.request_restart(attempt + 1, reason)

    def _on_ready(self, rank: int, attempt: int) -> None:
        with self.mlock:
            ready = self.ready_for.setdefault(attempt, set())
            ready.add(rank)
            everyone = len(ready) == self.sup.args.peers
        if everyone:
            with self.mlock:
                self.said[GO] = Message(GO, attempt)
            self._broadcast(Message(GO, attempt))
            self.sup.go(attempt)

    def failed(self, attempt: int, reason: str) -> None:
        """This node's torchrun failed and restarts are left: ask node 0 to restart the group."""
        if self.is_coordinator:
            self._on_failed(attempt, reason)
        else:
            self._to_coordinator(Message(FAILED, attempt, reason=reason))

    def ready(self, attempt: int) -> None:
        """This node's torchrun of the attempt before `attempt` has ended."""
        if self.is_coordinator:
            self._on_ready(0, attempt)
        else:
            self._to_coordinator(Message(READY, attempt))

    def _to_coordinator(self, message: Message) -> None:
        """Send once this node has reached node 0 (it may still be connecting)."""
        while self.conn is None and not self.ended.is_set() and not self.sup.stopping.is_set():
            time.sleep(0.1)
        if self.conn is not None:
            _send(self.conn, message)

    def _stop_message(self) -> Message:
        return Message(STOP, cause=self.sup.cause, reason=self.sup.stop_reason or "")

    def _stop_all(self, cause: str, reason: str, lost: str | None = None) -> None:
        self.sup.stop(cause, reason, lost)
        self._broadcast(self._stop_message())

    def _broadcast(self, message: Message) -> None:
        with self.mlock:
            conns = [m.conn for m in self.members.values() if m.ended is None]
        for conn in conns:
            _send(conn, message)

    def _beat_members(self) -> None:
        now = time.monotonic()
        if now - self.last_beat >= BEAT_S:
            self.last_beat = now
            self._broadcast(Message(BEAT))

    # ---- nodes 1..N-1
    def _connect(self) -> socket.socket | None:
        """Reach node 0's supervisor, trying for JOIN_TIMEOUT_S (it may start later than this one)."""
        started = time.monotonic()
        while self.conn is None and not self.ended.is_set():
            try:
                self.conn = socket.create_connection(self.address, timeout=5)
            except OSError:
                if time.monotonic() - started > JOIN_TIMEOUT_S:
                    self.sup.stop(contract.STOPPED_FOR_PEER_LOST, f"cannot reach node 0's supervisor at {self.address[0]}:{self.address[1]}",
                                  lost=self.coordinator_host)
                    return None
                time.sleep(0.5)
        return self.conn

    def _report(self) -> None:
        conn = self._connect()
        if conn is None:
            return
        _send(conn, Message(HELLO, self.sup.args.node_rank, host=self.sup.args.host))
        threading.Thread(target=self._beat_coordinator, args=(conn,), daemon=True).start()
        conn.settimeout(self.sup.args.peer_timeout)
        reader = conn.makefile("rb")
        why = "its connection dropped"  # node 0's supervisor or host went
        try:
            for raw in reader:
                message = Message.from_line(raw)
                if message is not None:
                    self._on_coordinator(message)
        except socket.timeout:  # silent: node 0's host lost, or this one cut off
            why = f"no word from it for {self.sup.args.peer_timeout:g} s"
            self.ended.wait(CENTER_FIRST_S)
        except OSError:
            pass
        if not self.ended.is_set():
            self.sup.stop(contract.STOPPED_FOR_PEER_LOST, f"lost node 0 ({self.coordinator_host}): {why}", lost=self.coordinator_host)

    def _on_coordinator(self, message: Message) -> None:
        if message.kind == NODE0:
            self.coordinator_host = message.host
        elif message.kind == RESTART:
            self.sup.request_restart(message.number, message.reason)
        elif message.kind == GO:
            self.sup.go(message.number)
        elif message.kind == STOP:
            self.sup.stop(message.cause or contract.STOPPED_FOR_PEER_FAILED, message.reason or "node 0 asked every node to stop")

    def _beat_coordinator(self, conn: socket.socket) -> None:
        while not self.ended.wait(BEAT_S):
            if not _send(conn, Message(BEAT)):
                return

    def finish(self, code: int) -> None:
        """The node's torchrun ended: tell the others; node 0 waits for every node to end."""
        preempted = self.sup.cause == contract.STOPPED_BY_PREEMPTION  # every node was warned: not a failure
        if self.is_coordinator:
            if code != 0 and not self.sup.stopping.is_set() and not preempted:
                self._stop_all(contract.STOPPED_FOR_PEER_FAILED, f"node 0 ({self.sup.args.host}) failed with exit code {code}")
            # a run that succeeded here waits for every member to end (a member that stops answering
            # stops the run); a stopped run has told every member to stop, and waits for none
            def all_ended() -> bool:
                return len(self.members) >= self.sup.args.peers - 1 and all(m.ended is not None for m in self.members.values())

            while not self.sup.stopping.is_set():
                with self.mlock:
                    if self.member_ended.wait_for(all_ended, timeout=0.2):
                        break
            self.ended.set()
        else:
            stopped = self.sup.stopping.is_set() or preempted
            self._to_coordinator(Message(END, code, cause=self.sup.cause if stopped else None,
                                         reason=(self.sup.stop_reason or "") if stopped else ""))
            self.ended.set()
            if self.conn is not None:
                self.conn.close()
