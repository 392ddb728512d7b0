"""Unit tests of the SSH transport: its bookkeeping, and the start command as a host's shell runs it
(its SSH behaviour is tested on the lab)."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from launcher.backends.ssh import _READY, _START, SshBackend, SshProcess
from launcher.errors import RunError
from launcher.hosts import ssh


class _Session:
    """An SFTP session whose closing races a lease renewal that drops another host's session."""

    def __init__(self, transport: SshBackend, other: str) -> None:
        self.transport, self.other, self.closed = transport, other, False

    def close(self) -> None:
        self.closed = True
        with self.transport.lock:
            self.transport.sftps.pop(self.other, None)


def test_closing_while_a_renewal_drops_a_session_closes_every_session() -> None:
    transport = SshBackend({}, None, "run")  # type: ignore[arg-type]
    first, second = _Session(transport, "h2"), _Session(transport, "h1")
    transport.sftps.update({"h1": first, "h2": second})  # type: ignore[dict-item]
    transport.close()
    assert first.closed and second.closed and transport.sftps == {}


def _helpers_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"shipped"
        info = tarfile.TarInfo("lib/launcher/node/x.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("with_helpers", [True, False])
def test_a_node_starts_in_one_command_with_private_folders_and_the_users_umask(tmp_path: Path, with_helpers: bool) -> None:
    """The start command as a host's shell runs it: folders 0700 and the lease made, the helpers
    unpacked from stdin, the ready line, then the node's command with the user's own umask."""
    node = tmp_path / "runs" / "r1" / "h1"
    folders = [node / "logs" / "h1", node / "metrics", tmp_path / "state" / "checkpoints", tmp_path / "state" / "work"]
    argv = ["sh", "-c", _START, "tar" if with_helpers else "-", *map(str, folders), str(node / "lease"), str(node),
            "sh", "-c", 'umask; echo "node runs in $(pwd)"']
    out = subprocess.run(argv, input=_helpers_tar() if with_helpers else b"", capture_output=True, timeout=30,
                         cwd=tmp_path, preexec_fn=lambda: os.umask(0o022))
    assert out.returncode == 0, out
    assert out.stdout == _READY + f"0022\nnode runs in {tmp_path}\n".encode(), out
    for folder in (*folders, tmp_path / "runs"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert (node / "lease").is_file()
    assert (node / "lib/launcher/node/x.py").exists() == with_helpers


def test_a_node_whose_folders_cannot_be_made_never_runs_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    argv = ["sh", "-c", _START, "-", *[str(tmp_path / "file" / "sub")] * 4, str(tmp_path / "lease"), str(tmp_path),
            "sh", "-c", "echo the node ran"]
    out = subprocess.run(argv, input=b"", capture_output=True, timeout=30)
    assert out.returncode != 0
    assert _READY not in out.stdout and b"the node ran" not in out.stdout
    assert b"Not a directory" in out.stderr, out


class _Channel:
    """A command's channel as paramiko hands it out: what it was sent, then `chunks` of output."""

    def __init__(self, chunks: list[bytes], exit_status: int = 0, connected: bool = True) -> None:
        self.chunks, self.exit_status, self.connected = list(chunks), exit_status, connected
        self.sent, self.input_ended, self.closed = b"", False, False
        self.status_event = threading.Event()
        self.status_event.set()

    def settimeout(self, _timeout) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def shutdown_write(self) -> None:
        self.input_ended = True

    def recv(self, _size: int) -> bytes:
        chunk = self.chunks.pop(0) if self.chunks else b""
        if chunk is socket.timeout:
            raise socket.timeout()
        return chunk

    def get_transport(self):
        return SimpleNamespace(is_active=lambda: self.connected)

    def close(self) -> None:
        self.closed = True


def _open_after(monkeypatch, channel: _Channel):
    monkeypatch.setattr(ssh, "open_command", lambda conn, argv: channel)
    return ssh.open_after(SimpleNamespace(host="h1"), ["start"], b"helpers", _READY, 5)


def test_open_after_hands_on_what_follows_a_marker_split_across_reads(monkeypatch) -> None:
    channel = _Channel([b"tar: a warning\n" + _READY[:10], _READY[10:] + b"node line 1\n", b"node line 2\n"])
    opened, rest = _open_after(monkeypatch, channel)
    assert opened is channel and rest == b"node line 1\n"
    assert channel.sent == b"helpers" and channel.input_ended and not channel.closed
    process = SshProcess(None, SimpleNamespace(host="h1"), channel, rest)  # type: ignore[arg-type]
    assert process.output.ended.wait(5)
    assert process.output.read(0) == b"node line 1\nnode line 2\n"


def test_open_after_tells_a_command_that_ended_from_a_connection_that_did(monkeypatch) -> None:
    opened, said = _open_after(monkeypatch, _Channel([b"mkdir: cannot create directory\n"], exit_status=1))
    assert opened is None and said == b"mkdir: cannot create directory\n"
    with pytest.raises(RunError, match="h1: SSH failed: the connection closed"):
        _open_after(monkeypatch, _Channel([b"partial"], exit_status=-1, connected=False))


def test_await_exit_waits_out_a_silent_command_while_the_host_answers(monkeypatch) -> None:
    """`docker load` says nothing while it unpacks, longer than a stalled stream may take: each
    silence asks the host whether it answers, and the wait goes on."""
    probes = []
    monkeypatch.setattr(ssh, "run", lambda conn, argv, timeout: probes.append(argv) or (0, ""))
    channel = _Channel([socket.timeout, socket.timeout, socket.timeout, b"Loaded image: x\n"], exit_status=0)
    assert ssh.await_exit(SimpleNamespace(host="h1"), channel, ["docker", "load"], 0.1) == (0, "Loaded image: x\n")
    assert probes == [["true"]] * 3


def test_await_exit_gives_up_on_a_host_that_stops_answering_or_a_connection_that_ends(monkeypatch) -> None:
    def silent(conn, argv, timeout):
        raise RunError("h1: `true` took longer than 0.1 s")

    monkeypatch.setattr(ssh, "run", silent)
    with pytest.raises(RunError, match=r"^h1: stopped answering while `docker load` ran \(`true` took longer than 0.1 s\)$"):
        ssh.await_exit(SimpleNamespace(host="h1"), _Channel([socket.timeout]), ["docker", "load"], 0.1)
    with pytest.raises(RunError, match="the connection closed while `docker load` ran"):
        ssh.await_exit(SimpleNamespace(host="h1"), _Channel([b"part"], exit_status=-1, connected=False), ["docker", "load"], 0.1)
