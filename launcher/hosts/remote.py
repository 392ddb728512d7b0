"""Nodes on lab hosts: their part of a run started over SSH, in a container (stopped by the run's
label) or, for runtime: host, as a process group of the host's own python (stopped by its id).

Each node gets a directory of its own for the run (`NodePlan.node_dir`), mounted into its container;
ranks write their logs and metrics there and `collect` brings them into the run directory.
"""

from __future__ import annotations

import io
import stat
import tarfile
import threading
import time
from pathlib import Path
from typing import Iterator

import fabric
import paramiko

from ..errors import RunError
from ..image.build import shipped_files, workdir_files
from ..node import contract
from ..plan import REMOTE_LIB, REMOTE_WORKDIR, RUN_LABEL, NodeKind, NodePlan
from ..run.rundir import RunPaths
from ..spec import Host
from .ssh import connect, open_command, pipe_into, run


class SshProcess:
    """One node's command (`docker run`, or torchrun for runtime: host), read from its SSH channel."""

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
        """End the node's part: its containers (by the run's label), or its process group."""
        try:
            conn = self.transport.control(self.node.host)
            if self.node.kind is NodeKind.HOST_PROCESS:
                self._stop_group(conn, grace_s)
            else:
                self._stop_containers(conn, grace_s)
        finally:
            deadline = time.monotonic() + 10
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.poll() is None:
                self.channel.close()
                self.code = 255

    def _stop_group(self, conn: fabric.Connection, grace_s: float) -> None:
        """SIGTERM the process group the node's torchrun leads, then SIGKILL what is left of it."""
        script = (
            'pg=$(cat "$0" 2>/dev/null) || exit 0; kill -TERM -"$pg" 2>/dev/null || exit 0; i=0; '
            'while kill -0 -"$pg" 2>/dev/null && [ "$i" -lt "$1" ]; do sleep 0.2; i=$((i+1)); done; '
            'kill -KILL -"$pg" 2>/dev/null; exit 0'
        )
        assert self.node.pid_file is not None
        run(conn, ["sh", "-c", script, self.node.pid_file, str(int(grace_s * 5))], timeout=grace_s + 30)

    def _stop_containers(self, conn: fabric.Connection, grace_s: float) -> None:
        """SIGTERM the run's containers on the host, then remove them by force."""
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


class SshTransport:
    """Runs each node's planned command on its host over SSH (Fabric)."""

    def __init__(self, hosts: dict[str, Host], paths: RunPaths, run_id: str, workdir: Path,
                 conns: dict[str, fabric.Connection] | None = None) -> None:
        self.hosts = hosts
        self.workdir = workdir
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
        # umask 077: the run's folders (and the user's folder above them) are private to the SSH user
        make = 'umask 077 && mkdir -p "$0" "$1"'
        code, out = run(conn, ["sh", "-c", make, *contract.node_dirs(node.node_dir, node.host)])
        if code != 0:
            raise RunError(f"{node.host}: cannot make {node.node_dir}: {out.strip()}")
        if node.kind is NodeKind.HOST_PROCESS:
            self._copy_job(conn, node)
        if node.secrets:
            # created 0600 from the start (umask), its content through stdin: never on a command line
            data = contract.format_secrets({name: secrets[name] for name in node.secrets})
            code, _ = pipe_into(conn, ["sh", "-c", 'umask 077 && cat > "$0"', f"{node.node_dir}/{contract.SECRETS_FILE}"], data)
            if code != 0:
                raise RunError(f"{node.host}: cannot write the secrets file in {node.node_dir}")
        return SshProcess(self, node, open_command(conn, node.argv))

    def _copy_job(self, conn: fabric.Connection, node: NodePlan) -> None:
        """runtime: host: the job's workdir and the launcher's in-rank helpers, as one tar over SSH."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in workdir_files(self.workdir):
                tar.add(path, arcname=f"{REMOTE_WORKDIR}/{path.relative_to(self.workdir)}")
            for path, name in shipped_files():
                tar.add(path, arcname=f"{REMOTE_LIB}/{name}")
        code, output = pipe_into(conn, ["tar", "-xz", "-C", node.node_dir], buffer.getvalue())
        if code != 0:
            raise RunError(f"{node.host}: cannot copy the job to {node.node_dir}: {output.strip()[-300:]}")

    def collect(self, node: NodePlan) -> None:
        """Copy the node's logs and metrics into the run directory, then remove its part of the run."""
        conn = self.control(node.host)
        sftp = conn.sftp()
        remote_logs, remote_metrics = contract.node_dirs(node.node_dir, node.host)
        for remote, local in ((remote_logs, self.paths.host_logs_dir(node.host)), (remote_metrics, self.paths.metrics_dir)):
            local.mkdir(parents=True, exist_ok=True)
            try:
                entries = sftp.listdir_attr(remote)
            except FileNotFoundError:  # the node never got as far as making it
                continue
            for entry in entries:
                if stat.S_ISREG(entry.st_mode or 0):
                    sftp.get(f"{remote}/{entry.filename}", str(Path(local) / entry.filename))
        run(conn, ["sh", "-c", 'rm -rf "$0"; rmdir "${0%/*}" 2>/dev/null; true', node.node_dir])

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
