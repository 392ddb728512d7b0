"""The node side's own pieces: whole-file writes, stopping a process, the mesh's messages, and
two node supervisors keeping in touch over loopback (fail-fast, a restart of the group)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from launcher.node import contract, mesh
from launcher.node.mesh import Message
from launcher.node.procs import terminate

ROOT = Path(__file__).resolve().parent.parent


# ---- replace_file
def test_replace_file_replaces_the_content_whole_with_a_hidden_temporary_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old, and longer than the new content")
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append((src, dst)), real_replace(src, dst)))
    contract.replace_file(str(target), b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    [(src, dst)] = renamed
    assert dst == str(target) and os.path.dirname(src) == str(tmp_path)
    assert re.fullmatch(rf"\.state\.json\.{os.getpid()}\.[0-9a-f]+\.tmp", os.path.basename(src)), src
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_replace_file_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def no_room(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(OSError):
        contract.replace_file(str(target), b"new")
    assert not contract.write_json_file(str(target), {"state": "running"})
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_json_file_writes_the_record(tmp_path: Path) -> None:
    path = tmp_path / "node.status.json"
    assert contract.write_json_file(str(path), {"state": "running", "pid": 7})
    assert json.loads(path.read_text()) == {"state": "running", "pid": 7}


# ---- terminate
def _child(code: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", code + "\nprint('ready', flush=True)\nimport time\ntime.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"  # its signal handling is in place
    return child


def test_terminate_kills_a_child_that_ignores_sigterm_after_the_grace_period() -> None:
    child = _child("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)")
    started = time.monotonic()
    assert terminate(child.send_signal, lambda: child.poll() is None, grace_s=0.6) is True
    assert child.wait(timeout=5) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.6


def test_terminate_lets_a_child_that_exits_on_sigterm_go_without_killing_it() -> None:
    child = _child("")
    sent = []
    started = time.monotonic()
    assert terminate(lambda sig: (sent.append(sig), child.send_signal(sig)), lambda: child.poll() is None, grace_s=10) is False
    assert child.returncode == -signal.SIGTERM and sent == [signal.SIGTERM]
    assert time.monotonic() - started < 5


# ---- the mesh's messages
@pytest.mark.parametrize("message", [
    Message(mesh.HELLO, 3, host="h4"),
    Message(mesh.BEAT),
    Message(mesh.FAILED, 0, reason="rank 2 on h3 exited with code 3"),
    Message(mesh.READY, 2),
    Message(mesh.END, 0),
    Message(mesh.END, -9),
    Message(mesh.END, 143, cause=contract.STOPPED_BY_SIGNAL, reason="SIGTERM received"),
    Message(mesh.NODE0, host="h1"),
    Message(mesh.RESTART, 1, reason="torchrun on h2 exited with code 1"),
    Message(mesh.GO, 1),
    Message(mesh.STOP, cause=contract.STOPPED_FOR_PEER_LOST, reason="node 2 (h3) stopped answering for 10 s"),
])
def test_mesh_messages_round_trip_as_one_line(message: Message) -> None:
    line = message.to_line()
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert Message.from_line(line) == message


def test_a_reason_over_several_lines_travels_on_one() -> None:
    line = Message(mesh.STOP, cause=contract.STOPPED_FOR_PEER_FAILED, reason="cannot prepare:\nOSError: full").to_line()
    assert line == b"stop peer-failed cannot prepare: OSError: full\n"
    assert Message.from_line(line) == Message(mesh.STOP, cause=contract.STOPPED_FOR_PEER_FAILED, reason="cannot prepare: OSError: full")


@pytest.mark.parametrize("line, expected", [
    (b"\n", None),
    (b"hello\n", None),
    (b"hello x h2\n", None),
    (b"hello 1 h 2\n", None),
    (b"ready soon\n", None),
    (b"go\n", None),
    (b"shout 1\n", None),
    (b"end\n", Message(mesh.END, 1)),  # an end that says no code is a failure
    (b"end 0 not-a-cause words\n", Message(mesh.END, 0)),
    (b"stop nonsense\n", Message(mesh.STOP, cause=None, reason="")),
])
def test_mesh_lines_that_are_no_message_or_say_too_little(line: bytes, expected: Message | None) -> None:
    assert Message.from_line(line) == expected


# ---- two node supervisors on loopback
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_supervisors(tmp_path: Path, commands: list[str], *options: str, port: int | None = None,
                       members_via: int | None = None) -> list[subprocess.Popen]:
    """One supervisor per command as the nodes of one run on 127.0.0.1 (node 0 listening on `port`,
    the others connecting to `members_via` when given)."""
    port = port or _free_port()
    procs = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    for rank, command in enumerate(commands):
        node_dir = tmp_path / f"n{rank}"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "launcher.node.supervisor", "--node-dir", str(node_dir), "--host", f"n{rank}",
             "--node-rank", str(rank), "--peers", str(len(commands)),
             "--coordinator", f"127.0.0.1:{members_via if rank and members_via else port}",
             "--grace", "2", *options, "--", sys.executable, "-c", command],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def _supervisors(tmp_path: Path, commands: list[str], *options: str, procs: list[subprocess.Popen] | None = None) -> list[dict]:
    """Run one supervisor per command as the nodes of one run on 127.0.0.1 (or wait for `procs`,
    started so); their final states."""
    procs = procs or _start_supervisors(tmp_path, commands, *options)
    try:
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(not e for e in errors), errors
    return [json.loads((tmp_path / f"n{rank}" / "logs" / f"n{rank}" / contract.NODE_STATUS).read_text())
            for rank in range(len(procs))]


def test_a_failed_node_stops_the_others_over_the_mesh(tmp_path: Path) -> None:
    node0, node1 = _supervisors(tmp_path, ["import time; time.sleep(60)", "raise SystemExit(3)"])
    assert (node1["state"], node1["exit_code"]) == (contract.FAILED, 3)
    assert (node0["state"], node0["cause"], node0["reason"]) == (
        contract.STOPPED, contract.STOPPED_FOR_PEER_FAILED, "node 1 (n1) failed with exit code 3")


class _Partition:
    """A TCP proxy from `listen` to `target` on loopback that passes bytes both ways until `cut`, and
    from then on drops them, its connections left open: a network that parted."""

    def __init__(self, target: int, connections: int = 1) -> None:
        self.target, self.open = target, threading.Event()
        self.open.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connected = threading.Event()
        self.left = connections
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with self.server:
            while self.left:
                self._pass_one()
                self.left -= 1
        self.connected.set()

    def _pass_one(self) -> None:
        conn, _ = self.server.accept()
        deadline = time.monotonic() + 30
        while True:  # node 0 may listen later than node 1 connects
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "node 0 never listened"
                time.sleep(0.1)
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.open.is_set():
                    dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        self.open.clear()


def _stopping_event(node_dir: Path, host: str) -> dict | None:
    output = node_dir / "logs" / host / contract.NODE_OUTPUT
    lines = output.read_bytes().splitlines() if output.exists() else []
    return next((e for e in map(lambda line: contract.parse_event(line + b"\n"), lines)
                 if e and e["event"] == contract.EVENT_STOPPING), None)


def test_where_the_network_parts_node_0_names_the_node_cut_off_first(tmp_path: Path) -> None:
    """Both sides of a cut find the other silent; where both can still write their word (a shared
    folder), node 0's (it sees every node) comes first, the other node's CENTER_FIRST_S later."""
    port = _free_port()
    partition = _Partition(port)
    procs = _start_supervisors(tmp_path, ["import time; time.sleep(60)"] * 2, "--peer-timeout", "3",
                               port=port, members_via=partition.port)
    assert partition.connected.wait(30)
    time.sleep(2)  # beats both ways
    partition.cut()
    said: dict[str, tuple[float, dict]] = {}
    deadline = time.monotonic() + 30
    while len(said) < 2 and time.monotonic() < deadline:
        for host in ("n0", "n1"):
            if host not in said and (event := _stopping_event(tmp_path / host, host)):
                said[host] = (time.monotonic(), event)
        time.sleep(0.05)
    node0, node1 = _supervisors(tmp_path, [], procs=procs)
    assert said["n0"][1]["lost"] == "n1" and said["n1"][1]["lost"] == "n0", said
    assert said["n1"][0] - said["n0"][0] > 1.0, said  # node 0 first, by more than the beats between them
    assert "node 1 (n1)" in node0["reason"] and node1["reason"] == "lost node 0 (n0): no word from it for 3 s"


def test_node_0_cut_off_from_every_other_node_names_itself(tmp_path: Path) -> None:
    port = _free_port()
    partition = _Partition(port, connections=2)
    procs = _start_supervisors(tmp_path, ["import time; time.sleep(60)"] * 3, "--peer-timeout", "3",
                               port=port, members_via=partition.port)
    assert partition.connected.wait(30)
    time.sleep(2)
    partition.cut()
    deadline = time.monotonic() + 30
    while not (event := _stopping_event(tmp_path / "n0", "n0")) and time.monotonic() < deadline:
        time.sleep(0.05)
    states = _supervisors(tmp_path, [], procs=procs)
    assert event is not None and event["lost"] == "n0", event  # not a healthy node
    assert states[0]["reason"] == "no word from any of the 2 other nodes for 3 s: this host's network is cut off"
    assert all(state["lost"] == "n0" for state in states), states


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_node_0_gone_is_said_at_once_as_a_dropped_connection(tmp_path: Path) -> None:
    """Node 0's supervisor killed: its host answers with a reset, not silence, and the other node
    says so without the wait a silent node 0 gets."""
    procs = _start_supervisors(tmp_path, ["import time; time.sleep(60)"] * 2, "--peer-timeout", "30")
    deadline = time.monotonic() + 30
    while not (tmp_path / "n1" / "logs" / "n1" / contract.NODE_STATUS).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # node 1 has reported in
    children = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent_of(int(pid)) == procs[0].pid]
    procs[0].kill()
    procs[0].wait()
    for pid in children:  # its command, orphaned by the kill
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    procs[1].wait(timeout=20)
    node1 = json.loads((tmp_path / "n1" / "logs" / "n1" / contract.NODE_STATUS).read_text())
    assert (node1["reason"], node1["lost"]) == ("lost node 0 (n0): its connection dropped", "n0"), node1
    assert time.monotonic() - started < 10  # neither the 30 s of silence nor more


def test_the_group_restarts_on_every_node_over_the_mesh(tmp_path: Path) -> None:
    attempt = f"int(os.environ['{contract.ATTEMPT}'])"
    node0, node1 = _supervisors(tmp_path, [f"import os, time; time.sleep(60 if {attempt} == 0 else 0)",
                                           f"import os; raise SystemExit(3 if {attempt} == 0 else 0)"],
                                "--max-restarts", "1")
    assert [(n["state"], n["restarts"]) for n in (node0, node1)] == [(contract.SUCCEEDED, 1), (contract.SUCCEEDED, 1)]
    events = [contract.parse_event(line + b"\n") for line in (tmp_path / "n0" / "logs" / "n0" / contract.NODE_OUTPUT).read_bytes().splitlines()]
    [restart] = [e for e in events if e and e["event"] == contract.EVENT_ATTEMPT]
    assert (restart["attempt"], restart["reason"]) == (1, "torchrun on n1 exited with code 3")


def test_a_code_file_gone_since_it_was_listed_is_left_out(tmp_path) -> None:
    """On one box the workdir is live: a file the launcher listed may be gone when the node copies."""
    import json

    from launcher.node import workspace

    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print(1)\n")
    listing = tmp_path / "workdir.json"
    listing.write_text(json.dumps({"files": [["train.py", 9, 0, "x"], [".gone.tmp", 3, 0, "y"]]}))
    workspace.prepare(str(tmp_path / "state"), str(code), str(listing))
    work = tmp_path / "state" / "work"
    assert (work / "train.py").read_text() == "print(1)\n" and not (work / ".gone.tmp").exists()


def test_a_host_nodes_pid_file_names_its_group_only_while_the_number_is_still_its() -> None:
    """The pid file HOST_WRAPPER writes, read back as `launch stop` and `status` read it (OWN_GROUP):
    a number the system has given to another process since is not taken for the node's group."""
    from launcher.plan.hostproc import HOST_WRAPPER, OWN_GROUP

    def group_in(pid_file: Path) -> str | None:
        found = subprocess.run(["sh", "-c", OWN_GROUP + 'echo "$pg"', str(pid_file)], capture_output=True, text=True)
        return found.stdout.strip() if found.returncode == 0 else None

    with tempfile.TemporaryDirectory() as tmp:
        pid_file = Path(tmp) / "h1.pid"
        node = subprocess.Popen(["setsid", "--wait", "sh", "-c", HOST_WRAPPER, str(pid_file), tmp, "", "", "sleep", "30"])
        try:
            deadline = time.monotonic() + 10
            start_file = Path(f"{pid_file}.start")
            while not start_file.exists() or not start_file.read_text().endswith("\n"):
                assert time.monotonic() < deadline, "the wrapper wrote no pid file"
                time.sleep(0.05)
            leader, start = pid_file.read_text().strip(), start_file.read_text().strip()
            assert int(leader) == node.pid and os.getpgid(node.pid) == node.pid  # it leads its own group
            assert group_in(pid_file) == leader
            start_file.write_text(f"{int(start) + 1}\n")  # the same number, another process's start
            assert group_in(pid_file) is None
            start_file.unlink()  # a pid file from before start times were kept
            assert group_in(pid_file) == leader
        finally:
            node.kill()
            node.wait()
        assert group_in(Path(tmp) / "none.pid") is None


# ---- launcher.node.torchrun
_PROBED_TORCHRUN = """\
import atexit, runpy, sys
class Teardown:
    def __del__(self):
        print("teardown ran", flush=True)
sys.modules["teardown_probe"] = Teardown()  # deleted only when the interpreter takes its modules apart
atexit.register(lambda: print("exit handlers ran", flush=True))
sys.argv = ["torchrun", *sys.argv[1:]]
runpy.run_module("launcher.node.torchrun", run_name="__main__")
"""


@pytest.mark.parametrize("exit_code", [0, 3])
def test_torchrun_ends_without_teardown_after_success_and_as_torchrun_does_after_a_failure(tmp_path: Path,
                                                                                            exit_code: int) -> None:
    rank = f"import sys; print('rank says hi'); sys.exit({exit_code})"
    out = subprocess.run([sys.executable, "-c", _PROBED_TORCHRUN, "--standalone", "--nproc-per-node=1", "--max-restarts=0",
                          "--no-python", sys.executable, "-c", rank],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "rank says hi" in out.stdout, out
    assert "exit handlers ran" in out.stdout, out
    if exit_code == 0:
        assert out.returncode == 0, out
        assert "teardown ran" not in out.stdout, out  # the 0.2-0.4 s of CPU it costs after `import torch`
    else:  # torchrun's own failure: its report, exit code 1, and the interpreter's usual exit
        assert out.returncode == 1, out
        assert "ChildFailedError" in out.stderr, out
        assert "teardown ran" in out.stdout, out


def test_torchrun_that_holds_the_store_of_several_nodes_ends_the_usual_way(tmp_path: Path) -> None:
    """Node 0's torchrun serves the rendezvous store the other nodes leave their exit barrier through."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-c", _PROBED_TORCHRUN, "--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1",
                               "--master-addr=127.0.0.1", f"--master-port={port}", "--max-restarts=0", "--no-python",
                               sys.executable, "-c", "print('rank says hi')"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
             for rank in (0, 1)]
    (out0, err0), (out1, err1) = (node.communicate(timeout=120) for node in nodes)
    assert [node.returncode for node in nodes] == [0, 0], (err0, err1)
    assert "rank says hi" in out0 and "rank says hi" in out1
    assert "teardown ran" in out0 and "teardown ran" not in out1, (out0, out1)


_ENDING = """\
import atexit, sys, threading, time
from launcher.node.procs import end_now
class Teardown:
    def __del__(self):
        print("teardown ran", flush=True)
sys.modules["teardown_probe"] = Teardown()
atexit.register(lambda: print("exit handlers ran", flush=True))
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread ended", flush=True))).start()
sys.stdout.write("buffered, not flushed\\n")
end_now(3)
"""


@pytest.mark.parametrize("with_thread", [False, True])
def test_end_now_keeps_the_code_output_and_exit_handlers_and_waits_for_threads(tmp_path: Path, with_thread: bool) -> None:
    out = subprocess.run([sys.executable, "-c", _ENDING, "thread" if with_thread else "alone"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 3, out
    assert "buffered, not flushed" in out.stdout and "exit handlers ran" in out.stdout, out
    if with_thread:  # the interpreter's usual exit: it waits for the thread, then takes its modules apart
        assert "thread ended" in out.stdout and "teardown ran" in out.stdout, out
    else:
        assert "teardown ran" not in out.stdout, out
