"""Nodes on lab hosts: their part of a run started in a container over SSH, stopped by the run's label.

Each node gets a directory of its own for the run (`NodePlan.node_dir`), mounted into its container;
ranks write their logs and metrics there and `collect` brings them into the run directory.
"""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from typing import Iterator

import fabric
import paramiko

from .errors import RunError
from .plan import RUN_LABEL, SECRETS_FILE, NodePlan
from .rundir import RunPaths
from .spec import Host
from .ssh import connect, open_command, run


class SshProcess:
    """One node's `docker run`, its output read from the SSH channel."""

    def __init__(self, transport: "SshTransport", node: NodePlan, channel: paramiko.Channel) -> None:
        self.transport = transport
        self.node = node
        self.channel = channel
        self.code: int | None = None

    def lines(self) -> Iterator[bytes]:
        yield from iter(self.channel.makefile("rb").readline, b"")

    def poll(self) -> int | None:
        if self.code is None and self.channel.exit_status_ready():
            self.code = self.channel.recv_exit_status()
        return self.code

    def stop(self, grace_s: float) -> None:
        """SIGTERM the node's containers (found by the run's label), then remove them by force."""
        conn = self.transport.control(self.node.host)
        ids_cmd = ["docker", "ps", "-q", "--filter", f"label={RUN_LABEL}={self.transport.run_id}"]
        code, out = run(conn, ids_cmd, timeout=30)
        ids = out.split() if code == 0 else []
        if ids:
            run(conn, ["docker", "kill", "--signal=SIGTERM", *ids], timeout=30)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                code, out = run(conn, ids_cmd, timeout=30)
                if code == 0 and not out.split():
                    break
                time.sleep(0.2)
            code, out = run(conn, ids_cmd, timeout=30)
            if out.split():
                run(conn, ["docker", "rm", "-f", *out.split()], timeout=60)
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.poll() is None:
            self.channel.close()
            self.code = 255


class SshTransport:
    """Runs each node's planned command on its host over SSH (Fabric)."""

    def __init__(self, hosts: dict[str, Host], paths: RunPaths, run_id: str, conns: dict[str, fabric.Connection] | None = None) -> None:
        self.hosts = hosts
        self.paths = paths
        self.run_id = run_id
        self.conns: dict[str, fabric.Connection] = dict(conns or {})
        self.lock = threading.Lock()

    def control(self, host: str) -> fabric.Connection:
        with self.lock:
            if host not in self.conns:
                self.conns[host] = connect(self.hosts[host])
            return self.conns[host]

    def start(self, node: NodePlan, secrets: dict[str, str]) -> SshProcess:
        conn = self.control(node.host)
        code, out = run(conn, ["mkdir", "-p", f"{node.node_dir}/logs/{node.host}", f"{node.node_dir}/metrics"])
        if code != 0:
            raise RunError(f"{node.host}: cannot make {node.node_dir}: {out.strip()}")
        if node.secrets:
            text = "".join(f"{name}={secrets[name]}\n" for name in node.secrets)
            with conn.sftp() as sftp:
                path = f"{node.node_dir}/{SECRETS_FILE}"
                with sftp.open(path, "w") as fh:
                    fh.chmod(0o600)
                    fh.write(text)
        return SshProcess(self, node, open_command(conn, node.argv))

    def collect(self, node: NodePlan) -> None:
        """Copy the node's logs and metrics into the run directory, then remove its part of the run."""
        conn = self.control(node.host)
        with conn.sftp() as sftp:
            for remote, local in (
                (f"{node.node_dir}/logs/{node.host}", self.paths.host_logs_dir(node.host)),
                (f"{node.node_dir}/metrics", self.paths.metrics_dir),
            ):
                local.mkdir(parents=True, exist_ok=True)
                try:
                    entries = sftp.listdir_attr(remote)
                except OSError:
                    continue
                for entry in entries:
                    if stat.S_ISREG(entry.st_mode or 0):
                        sftp.get(f"{remote}/{entry.filename}", str(Path(local) / entry.filename))
        run(conn, ["rm", "-rf", node.node_dir])

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
