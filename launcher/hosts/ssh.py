"""SSH connections to lab hosts (Fabric), with host keys verified as OpenSSH would.

`strict` refuses a host whose key is not in known_hosts; `accept-new` records an unknown host's key
on first contact and refuses a changed one. Nothing accepts a changed key. The user's
~/.ssh/config is not read: the inventory says everything a connection needs.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
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


def connect(host: Host, timeout: float = 10) -> fabric.Connection:
    """An open connection to `host`; RunError naming the host when it cannot be had."""
    ssh = host.ssh
    known_hosts = Path(os.path.expanduser(ssh.known_hosts))
    identity = os.path.expanduser(ssh.identity_file) if ssh.identity_file else None
    config = fabric.Config(overrides={"load_ssh_configs": False})
    conn = fabric.Connection(
        host.address,
        user=ssh.user or getpass.getuser(),
        port=ssh.port,
        config=config,
        connect_timeout=timeout,
        connect_kwargs={"key_filename": [identity] if identity else None, "look_for_keys": identity is None},
    )
    if known_hosts.exists():
        conn.client.load_host_keys(str(known_hosts))
    if ssh.host_key_policy == "accept-new":
        conn.client.set_missing_host_key_policy(_AcceptNew(known_hosts))
    else:
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    where = f"{host.name} ({ssh.user or getpass.getuser()}@{host.address}:{ssh.port})"
    try:
        conn.open()
    except paramiko.BadHostKeyException:
        raise RunError(f"{where}: its host key does not match {known_hosts}; refusing to connect") from None
    except paramiko.AuthenticationException as exc:
        raise RunError(f"{where}: authentication failed ({exc})") from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise RunError(
                f"{where}: its host key is not in {known_hosts}; add it (ssh-keyscan) or set host_key_policy: accept-new"
            ) from None
        raise RunError(f"{where}: SSH failed: {exc}") from None
    except (OSError, socket.timeout) as exc:
        raise RunError(f"{where}: cannot connect: {exc}") from None
    transport = conn.client.get_transport()
    if transport is not None:  # opening a command's channel on a host that went silent fails in time
        transport.channel_timeout = CHANNEL_OPEN_TIMEOUT_S
    return conn


_TRANSPORT_ERRORS = (paramiko.SSHException, OSError, EOFError, socket.timeout)


def run(conn: fabric.Connection, argv: Sequence[str], timeout: float = 120) -> tuple[int, str]:
    """Run a command (an argv list, quoted here and nowhere else); its exit code and merged output.

    On a channel of our own rather than through invoke's runner, which would take a Ctrl-C for the
    remote command and swallow it: here it reaches the launcher like anywhere else."""
    return pipe_into(conn, argv, b"", timeout)


def open_command(conn: fabric.Connection, argv: Sequence[str]) -> paramiko.Channel:
    """Start a command whose stdout and stderr come back merged on the returned channel."""
    try:
        transport = conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("the connection is closed")
        channel = transport.open_session()
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
        channel.settimeout(timeout)
        if data:
            channel.sendall(data)
        channel.shutdown_write()
        output = channel.makefile("rb").read().decode(errors="replace")
        if not channel.status_event.wait(timeout):
            raise socket.timeout()
        return channel.recv_exit_status(), output
    except socket.timeout:
        raise RunError(f"{conn.host}: `{shlex.join(argv)[:80]}` took longer than {timeout:g} s") from None
    except _TRANSPORT_ERRORS as exc:
        raise RunError(f"{conn.host}: SSH failed: {str(exc) or type(exc).__name__}") from None
    finally:
        channel.close()
