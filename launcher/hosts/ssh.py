"""SSH connections to lab hosts (Fabric), with host keys verified as OpenSSH would.

A host is reached as OpenSSH would reach it: the user's ~/.ssh/config (and /etc/ssh/ssh_config)
apply to the inventory's `address` (`Host` aliases, `HostName`, `User`, `Port`, `IdentityFile`,
`ProxyJump`, `ProxyCommand`, `UserKnownHostsFile`), then ssh-agent and the default keys
(~/.ssh/id_*) are tried; what the inventory sets explicitly wins over all of these.

`strict` refuses a host whose key is not in known_hosts; `accept-new` records an unknown host's key
on first contact and refuses a changed one. Nothing accepts a changed key; jump hosts are checked
the same way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import socket
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Sequence

import fabric
import paramiko

from ..errors import RunError
from ..spec import Host

CHANNEL_OPEN_TIMEOUT_S = 30.0


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """OpenSSH's StrictHostKeyChecking=accept-new: trust and record a key seen for the first time."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.known_hosts.open("a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


def connection(host: Host, timeout: float = 10) -> fabric.Connection:
    """A Connection to `host` as OpenSSH would make it, not opened yet, host keys checked by policy."""
    ssh = host.ssh
    identity = os.path.expanduser(ssh.identity_file) if ssh.identity_file else None
    conn = fabric.Connection(
        host.address,
        user=ssh.user,  # None: ~/.ssh/config's User, else the local user
        port=ssh.port,  # None: ~/.ssh/config's Port, else 22
        config=fabric.Config(overrides={"load_ssh_configs": True}),
        connect_timeout=timeout,
        connect_kwargs={"key_filename": [identity], "look_for_keys": False} if identity else {},
    )
    known_hosts = known_hosts_file(host, conn)
    hop: object = conn
    while isinstance(hop, fabric.Connection):  # the host, then each ProxyJump hop
        _verify_keys(hop, known_hosts, ssh.host_key_policy)
        hop = hop.gateway
    return conn


def known_hosts_file(host: Host, conn: fabric.Connection) -> Path:
    """The inventory's known_hosts, else ~/.ssh/config's UserKnownHostsFile, else ~/.ssh/known_hosts."""
    configured = (conn.ssh_config.get("userknownhostsfile") or "").split()
    chosen = host.ssh.known_hosts or (configured[0] if configured else "~/.ssh/known_hosts")
    return Path(os.path.expanduser(chosen))


def _verify_keys(conn: fabric.Connection, known_hosts: Path, policy: str) -> None:
    if os.path.isfile(GLOBAL_KNOWN_HOSTS):
        conn.client.load_system_host_keys(GLOBAL_KNOWN_HOSTS)
    if known_hosts.exists():
        conn.client.load_host_keys(str(known_hosts))
    if policy == "accept-new":
        conn.client.set_missing_host_key_policy(_AcceptNew(known_hosts))
    else:
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())


def describe(host: Host, conn: fabric.Connection) -> str:
    """`name (user@hostname:port)`, with the jump hosts it goes through."""
    hops = []
    gateway = conn.gateway
    while isinstance(gateway, fabric.Connection):
        hops.append(f"{gateway.user}@{gateway.host}:{gateway.port}")
        gateway = gateway.gateway
    via = f" via {', '.join(hops)}" if hops else " via ProxyCommand" if isinstance(conn.gateway, str) else ""
    return f"{host.name} ({conn.user}@{conn.host}:{conn.port}{via})"


def as_ssh_reaches(hosts: tuple[Host, ...]) -> tuple[Host, ...]:
    """The hosts with what ~/.ssh/config adds to the inventory: the user each is logged into as (remote
    folders are named by it) and the HostName an alias stands for (the rendezvous needs it)."""
    resolved = []
    for host in hosts:
        if host.is_local:
            resolved.append(host)
            continue
        try:
            conn = connection(host)
        except (ValueError, TypeError, OSError, paramiko.SSHException):
            resolved.append(host)  # said when it connects
            continue
        hostname = conn.host if conn.host != host.address else None
        resolved.append(dataclasses.replace(host, hostname=hostname, ssh=dataclasses.replace(host.ssh, user=conn.user)))
    return tuple(resolved)


_TRIED = "tried ssh-agent, the inventory's identity_file, IdentityFile from ~/.ssh/config and ~/.ssh/id_*"


def connect(host: Host, timeout: float = 10) -> fabric.Connection:
    """An open connection to `host`; RunError naming the host when it cannot be had."""
    try:
        conn = connection(host, timeout)
    except (ValueError, TypeError, OSError, paramiko.SSHException) as exc:  # an unusable ~/.ssh/config
        raise RunError(f"{host.name} ({host.address}): cannot use the SSH settings for it (~/.ssh/config): {exc}") from None
    where = describe(host, conn)
    known_hosts = known_hosts_file(host, conn)
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise RunError(f"{where}: the host key of {exc.hostname} does not match {known_hosts}; refusing to connect") from None
    except paramiko.AuthenticationException as exc:
        raise RunError(f"{where}: authentication failed ({exc}); {_TRIED}") from None
    except paramiko.SSHException as exc:
        if "No authentication methods" in str(exc):
            raise RunError(f"{where}: authentication failed (no key to offer); {_TRIED}") from None
        if "not found in known_hosts" in str(exc):
            named = re.search(r"Server '(.*)' not found", str(exc))
            raise RunError(
                f"{where}: the host key of {named.group(1) if named else 'the host'} is not in {known_hosts}; "
                "add it (ssh-keyscan) or set host_key_policy: accept-new"
            ) from None
        raise RunError(f"{where}: SSH failed: {exc}") from None
    except (OSError, socket.timeout, EOFError) as exc:
        raise RunError(f"{where}: cannot connect: {exc or type(exc).__name__}") from None
    _limit_channel_opens(conn)
    return conn


def _limit_channel_opens(conn: fabric.Connection) -> None:
    transport = conn.client.get_transport()
    if transport is not None:  # opening a command's channel on a host that went silent fails in time
        transport.channel_timeout = CHANNEL_OPEN_TIMEOUT_S


_TRANSPORT_ERRORS = (paramiko.SSHException, OSError, EOFError, socket.timeout)
_LOCKS = threading.Lock()
_REOPENING: "weakref.WeakKeyDictionary[paramiko.SSHClient, threading.Lock]" = weakref.WeakKeyDictionary()
_GIVEN_UP: "weakref.WeakSet[paramiko.SSHClient]" = weakref.WeakSet()  # could not be opened again: host lost


def live_transport(conn: fabric.Connection) -> paramiko.Transport:
    """The connection's transport for a new command, opened again if the host closed it since the
    last command (sshd restarted, an idle link dropped by a firewall); once that fails, the host is
    taken for lost. A command that was running when it closed is never run again: it failed with it."""
    transport = conn.client.get_transport()
    if transport is not None and transport.is_authenticated():  # a channel opened before that is never answered
        return transport
    with _LOCKS:  # threads share connections: one of them opens it again, the others wait for it
        lock = _REOPENING.setdefault(conn.client, threading.Lock())
    with lock:
        transport = conn.client.get_transport()
        if transport is not None and transport.is_authenticated():
            return transport
        if conn.client in _GIVEN_UP:
            raise paramiko.SSHException("the connection is closed")
        conn.close()
        try:
            conn.open()
        except _TRANSPORT_ERRORS as exc:
            _GIVEN_UP.add(conn.client)
            raise paramiko.SSHException(f"the connection was closed and could not be opened again: "
                                        f"{str(exc) or type(exc).__name__}") from None
        _limit_channel_opens(conn)
        return conn.client.get_transport()


def end_input(channel: paramiko.Channel) -> None:
    """Tell a remote command its input has ended (EOF), unless its channel has closed already.

    paramiko's `shutdown_write` makes the EOF under the channel's lock but sends it after letting go,
    so when the command ends at that moment paramiko's CLOSE can go out first; OpenSSH then drops the
    whole connection ("ieof packet referred to nonexistent channel"), every other command on it too.
    Here the EOF is sent while the channel's lock is held (paramiko needs it to make its CLOSE), and
    under the transport's send lock taken first, once no key exchange is under way: paramiko's own
    thread never waits for that lock while it holds a channel's."""
    names = ("lock", "_send_eof", "transport")
    lock, make_eof, transport = (getattr(channel, name, None) for name in names)
    parts = [getattr(transport, name, None) for name in ("clear_to_send", "clear_to_send_lock", "_send_message")]
    if lock is None or make_eof is None or None in parts:
        channel.shutdown_write()  # a paramiko without these: its own way
        return
    clear, send_lock, send = parts
    deadline = time.monotonic() + CHANNEL_OPEN_TIMEOUT_S
    while True:  # as paramiko's own sends wait for a key exchange to end
        if not transport.is_active():
            return  # the connection is gone: no input to end
        clear.wait(0.1)
        send_lock.acquire()
        if clear.is_set():
            break
        send_lock.release()
        if time.monotonic() > deadline:
            raise paramiko.SSHException("the key exchange did not end")
    try:
        with lock:
            message = None if channel.closed else make_eof()  # None too when it was sent already
            if message is not None:
                send(message)
    finally:
        send_lock.release()


def run(conn: fabric.Connection, argv: Sequence[str], timeout: float = 120) -> tuple[int, str]:
    """Run a command (an argv list, quoted here and nowhere else); its exit code and merged output.

    On a channel of our own rather than through invoke's runner, which would take a Ctrl-C for the
    remote command and swallow it: here it reaches the launcher like anywhere else."""
    return pipe_into(conn, argv, b"", timeout)


def open_command(conn: fabric.Connection, argv: Sequence[str]) -> paramiko.Channel:
    """Start a command whose stdout and stderr come back merged on the returned channel."""
    try:
        channel = live_transport(conn).open_session()
        channel.set_combine_stderr(True)
        channel.exec_command(shlex.join(argv))
    except _TRANSPORT_ERRORS as exc:
        raise RunError(f"{conn.host}: SSH failed: {exc or type(exc).__name__}") from None
    return channel


def pipe_into(conn: fabric.Connection, argv: Sequence[str], data: bytes, timeout: float = 600) -> tuple[int, str]:
    """Run a command with `data` as its standard input (never on its command line); its exit code
    and merged output. RunError when the host says nothing for `timeout` seconds."""
    channel = open_command(conn, argv)
    try:
        _feed(channel, data, timeout)
        output = channel.makefile("rb").read().decode(errors="replace")
        if not channel.status_event.wait(timeout):
            raise socket.timeout()
        if _connection_ended(channel):
            raise _ended_while(conn, argv)
        return channel.recv_exit_status(), output
    except socket.timeout:
        raise RunError(f"{conn.host}: `{shlex.join(argv)[:80]}` took longer than {timeout:g} s") from None
    except _TRANSPORT_ERRORS as exc:
        raise RunError(f"{conn.host}: SSH failed: {str(exc) or type(exc).__name__}") from None
    finally:
        channel.close()


def await_exit(conn: fabric.Connection, channel: paramiko.Channel, argv: Sequence[str], probe_s: float) -> tuple[int, str]:
    """The rest of a started command's output once it has ended, and its exit code, however long it
    takes (`docker load` unpacking gigabytes after its input ended): while it says nothing, the host
    is asked every `probe_s` seconds whether it still answers. RunError when it does not, or when the
    connection ends first."""
    def answers() -> None:
        try:
            run(conn, ["true"], timeout=probe_s)
        except RunError as exc:
            raise RunError(f"{conn.host}: stopped answering while `{shlex.join(argv)[:80]}` ran "
                           f"({str(exc).removeprefix(conn.host + ': ')})") from None

    output = bytearray()
    channel.settimeout(probe_s)
    try:
        while True:
            try:
                chunk = channel.recv(65536)
            except socket.timeout:
                answers()
                continue
            if not chunk:
                break
            output += chunk
        while not channel.status_event.wait(probe_s) and not _connection_ended(channel):
            answers()  # its output has ended, its exit status is yet to come
        if _connection_ended(channel):
            raise _ended_while(conn, argv)
        return channel.exit_status, output.decode(errors="replace")  # -1: none came (a signal ended it)
    except _TRANSPORT_ERRORS as exc:
        raise RunError(f"{conn.host}: SSH failed: {str(exc) or type(exc).__name__}") from None


def _feed(channel: paramiko.Channel, data: bytes, timeout: float) -> None:
    """A started command's whole input, then its end."""
    channel.settimeout(timeout)
    if data:
        channel.sendall(data)
    end_input(channel)


def _connection_ended(channel: paramiko.Channel) -> bool:
    """The channel ended with no exit status because its connection did."""
    transport = channel.get_transport()
    return channel.exit_status == -1 and (transport is None or not transport.is_active())


def _ended_while(conn: fabric.Connection, argv: Sequence[str]) -> RunError:
    return RunError(f"{conn.host}: SSH failed: the connection closed while `{shlex.join(argv)[:80]}` ran")


def open_after(conn: fabric.Connection, argv: Sequence[str], data: bytes, marker: bytes,
               timeout: float) -> tuple[paramiko.Channel | None, bytes]:
    """Start a command, give it `data` as its whole input, and wait until its output holds `marker`
    (a line it writes once its first steps are done): its channel, streaming on, and the output that
    came after the marker; or, when the command ended first, None and all it said. RunError when the
    host says nothing for `timeout` seconds, or the connection fails."""
    channel = open_command(conn, argv)
    said = b""
    try:
        _feed(channel, data, timeout)
        while marker not in said:
            chunk = channel.recv(1 << 16)
            if not chunk:  # the command ended, or the connection did
                channel.status_event.wait(timeout)
                lost = _connection_ended(channel)
                channel.close()
                if lost:
                    raise _ended_while(conn, argv)
                return None, said
            said += chunk
        channel.settimeout(None)
        return channel, said.split(marker, 1)[1]
    except socket.timeout:
        channel.close()
        raise RunError(f"{conn.host}: `{shlex.join(argv)[:80]}` said nothing for {timeout:g} s") from None
    except _TRANSPORT_ERRORS as exc:
        channel.close()
        raise RunError(f"{conn.host}: SSH failed: {str(exc) or type(exc).__name__}") from None


def sftp_files(sftp: paramiko.SFTPClient, folder: str) -> list[tuple[str, int]]:
    """Every regular file under `folder` on the host, as (path relative to it, size); links are not
    followed, nor listed; a folder that is gone or private is passed over."""
    found: list[tuple[str, int]] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            entries = sftp.listdir_attr(f"{folder}/{rel}" if rel else folder)
        except (FileNotFoundError, PermissionError):
            continue
        for entry in entries:
            path = f"{rel}/{entry.filename}" if rel else entry.filename
            if stat.S_ISDIR(entry.st_mode or 0):
                pending.append(path)
            elif stat.S_ISREG(entry.st_mode or 0):
                found.append((path, entry.st_size or 0))
    return found
