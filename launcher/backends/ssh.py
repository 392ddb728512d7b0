"""The lab backend: each node's part of a run is started over SSH (Fabric) on its host, in a
container (stopped by the run's label) or, for runtime: host, as a process group of the host's
own python (stopped by its id).

Each node gets a directory of its own for the run (`NodePlan.node_dir`), mounted into its container;
the node supervisor and the ranks write their logs, metrics and state there, and `collect` brings
them into the run directory. Attached runs renew each node's lease here (`renew`).
"""

from __future__ import annotations

import io
import json
import re
import socket
import stat
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import fabric
import paramiko

from ..errors import RunError
from ..hosts.ssh import connect, live_transport, open_after, pipe_into, run, sftp_files
from ..image.build import shipped_files
from ..node import contract
from ..plan import OWN_GROUP, REMOTE_LIB, RUN_LABEL, STOP_GRACE_S, LaunchPlan, NodeKind, NodePlan, PlanOptions, make_plan
from ..record import outputs
from ..record.outcome import Phases
from ..record.rundir import RunPaths
from ..spec import Host, JobSpec
from ..sync.manifest import Manifest
from .base import EXTRA_WAIT_S, OUTPUT_CHUNK, LiveOutput, WithoutScheduler, start_every_node

RENEW_TIMEOUT_S = 5.0
COLLECT_TIMEOUT_S = 60.0  # a host silent this long while its files come back has failed the copy
TIDY_TIMEOUT_S = 120.0  # the launcher waits this long at its end for old copies' removal
START_TIMEOUT_S = 120.0  # a node's start command silent this long has failed

# A node's start, in one command: its folders made private to the SSH user (umask 077, in a subshell:
# the node keeps the user's umask), with $0 "tar" what ships with the ranks unpacked from stdin, the
# lease there before the node starts (renewing it never fails on a healthy host); then a line saying
# so, and the node's own command in the shell's place.
_READY = b"launch: the node's folders are ready\n"
_START = ('( umask 077 && mkdir -p "$1" "$2" "$3" "$4" && touch "$5" && { [ "$0" != tar ] || tar -xz -C "$6"; } ) '
          f'|| exit 1; echo "{_READY.decode().strip()}"; shift 6; exec "$@"')


def _usable(client: paramiko.SFTPClient) -> bool:
    channel = client.get_channel()
    transport = channel.get_transport() if channel is not None else None
    return channel is not None and not channel.closed and transport is not None and transport.is_active()


def _close_quietly(client: paramiko.SFTPClient) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a session that may be gone already
        pass


def _cannot_make(node: NodePlan, said: str) -> RunError:
    return RunError(f"{node.host}: cannot make {node.node_dir}: {said.strip()[-300:]}")


class SshProcess:
    """One node's command (`docker run`, or torchrun for runtime: host) started attached: its output
    read from its SSH channel as it comes."""

    def __init__(self, backend: "SshBackend", node: NodePlan, channel: paramiko.Channel, first: bytes = b"") -> None:
        self.backend = backend
        self.node = node
        self.channel = channel
        self.code: int | None = None
        pending = [first] if first else []  # what came with the start command's last line
        self.output = LiveOutput(lambda: pending.pop() if pending else channel.recv(1 << 16))

    def poll(self) -> int | None:
        if self.code is None and self.channel.exit_status_ready():
            self.code = self.channel.recv_exit_status()
        return self.code

    def stop(self, grace_s: float) -> str | None:
        """End the node's part: its containers (by the run's label), or its process group. Asked
        again while the node's command still runs: a container still being created when the first
        stop looked is found by the next."""
        forced = None
        deadline = time.monotonic() + grace_s + EXTRA_WAIT_S + 10
        try:
            while True:
                forced = self.backend.stop_part(self.node, grace_s) or forced
                settle = time.monotonic() + 2
                while self.poll() is None and time.monotonic() < settle:
                    time.sleep(0.05)
                if self.poll() is not None or time.monotonic() > deadline:
                    return forced
        finally:
            if self.poll() is None:
                self.channel.close()
                self.code = 255


class SshBackend(WithoutScheduler):
    """Runs each node's planned command on its host over SSH (Fabric)."""

    name = "ssh"

    def __init__(self, hosts: dict[str, Host], paths: RunPaths, run_id: str,
                 conns: dict[str, fabric.Connection] | None = None) -> None:
        self.hosts = hosts
        self.paths = paths
        self.run_id = run_id
        self.conns: dict[str, fabric.Connection] = dict(conns or {})
        self.sftps: dict[str, paramiko.SFTPClient] = {}
        self.sftp_busy: dict[str, threading.Lock] = {}  # one user of a host's session at a time
        self.lock = threading.Lock()
        self.connecting = {name: threading.Lock() for name in hosts}  # one connect at a time per host
        self.live: dict[str, SshProcess] = {}  # host -> its attached command
        self.helpers: bytes | None = None
        self.tidy_ups: list[Callable[[], None]] = []  # done once the nodes have started: old copies removed
        self.tidying: threading.Thread | None = None

    def prepare(self, job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions, manifest: Manifest,
                say: Callable[[str], None], phases: Phases) -> LaunchPlan:
        from .deploy import prepare_lab  # the Docker SDK only when a run is prepared

        return prepare_lab(self, job, hosts, run_id, options, manifest, say, phases)

    def describe(self, job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions, manifest: Manifest) -> str:
        from .deploy import describe_deployment, lab_folders

        return (make_plan(job, hosts, run_id, options).describe() + "\n"
                + describe_deployment(job, hosts, manifest, options.image, lab_folders(job, hosts, options)))


    def control(self, host: str) -> fabric.Connection:
        with self.connecting[host]:
            if host not in self.conns:
                self.conns[host] = connect(self.hosts[host])
            return self.conns[host]

    @contextmanager
    def _sftp(self, host: str) -> Iterator[paramiko.SFTPClient]:
        """The host's SFTP session for leases and reading state (short time-out), one user at a time:
        paramiko's client can take another thread's reply for its own, and the other then waits forever.
        A session whose connection failed, or was opened again since, is let go (closed: a host allows
        only so many) before the next user comes."""
        with self.lock:
            busy = self.sftp_busy.setdefault(host, threading.Lock())
        with busy:
            with self.lock:
                client = self.sftps.pop(host, None)
            if client is not None and not _usable(client):
                _close_quietly(client)
                client = None
            if client is None:
                client = self._open_sftp(host, RENEW_TIMEOUT_S)
            broken = False
            try:
                yield client
            except (EOFError, paramiko.SSHException, socket.timeout, ConnectionError):
                broken = True
                raise
            finally:
                if broken:
                    _close_quietly(client)
                else:  # an answer from the host (a file not there) leaves the session as good as before
                    with self.lock:
                        self.sftps[host] = client

    def _open_sftp(self, host: str, timeout_s: float) -> paramiko.SFTPClient:
        try:
            transport = live_transport(self.control(host))
        except paramiko.SSHException as exc:
            raise RunError(f"{host}: {exc}") from None
        channel = transport.open_session(timeout=timeout_s)
        channel.settimeout(timeout_s)
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)

    # ---- starting
    def submit(self, plan: LaunchPlan, secrets: dict[str, str], attached: bool) -> None:
        start_every_node(plan, lambda node: self._start(node, secrets, attached), lambda node: self.stop(node, STOP_GRACE_S))
        if self.tidy_ups:  # out of the start's way
            self.tidying = threading.Thread(target=lambda: [tidy() for tidy in self.tidy_ups], daemon=True)
            self.tidying.start()

    def _start(self, node: NodePlan, secrets: dict[str, str], attached: bool) -> None:
        """The node's folders made, what ships with the ranks unpacked, then the node's command: one
        round trip (two with secrets, written first)."""
        conn = self.control(node.host)
        if node.secrets:
            # created 0600 from the start (umask), its content through stdin: never on a command line
            data = contract.format_secrets({name: secrets[name] for name in node.secrets})
            code, out = pipe_into(conn, ["sh", "-c", 'umask 077 && mkdir -p "${0%/*}" && cat > "$0"',
                                         f"{node.node_dir}/{contract.SECRETS_FILE}"], data)
            if code != 0:
                raise _cannot_make(node, out)
        helpers = self._helpers() if node.kind is NodeKind.HOST_PROCESS else b""
        folders = [*contract.node_dirs(node.node_dir, node.host), node.checkpoint_dir,
                   f"{node.state_dir}/{contract.STATE_WORK}", f"{node.node_dir}/{contract.LEASE_FILE}"]
        argv = ["sh", "-c", _START, "tar" if helpers else "-", *folders, node.node_dir, *node.argv]
        if attached:
            channel, said = open_after(conn, argv, helpers, _READY, START_TIMEOUT_S)
            if channel is None:
                raise _cannot_make(node, said.decode(errors="replace"))
            self.live[node.host] = SshProcess(self, node, channel, said)
            return
        code, out = pipe_into(conn, argv, helpers, timeout=START_TIMEOUT_S)
        before, ready, after = out.partition(_READY.decode())
        if not ready:
            raise _cannot_make(node, before)
        if code != 0:
            raise RunError(f"{node.host}: the node did not start (exit code {code}): {after.strip()[-300:]}")

    def _helpers(self) -> bytes:
        """runtime: host: what ships with the ranks (the node supervisor, the rank wrapper), as a
        tar.gz made once per launch for every host."""
        with self.lock:
            if self.helpers is None:
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                    for path, name in shipped_files():
                        tar.add(path, arcname=f"{REMOTE_LIB}/{name}")
                self.helpers = buffer.getvalue()
            return self.helpers

    # ---- while it runs
    def renew(self, node: NodePlan) -> None:
        """Touch the node's lease; an answer from the host that the file is not there (the node has
        ended and its folder went) still counts as an answer."""
        try:
            with self._sftp(node.host) as sftp:
                sftp.utime(f"{node.node_dir}/{contract.LEASE_FILE}", None)
        except (EOFError, paramiko.SSHException, socket.timeout, ConnectionError) as exc:
            raise RunError(str(exc) or type(exc).__name__) from None
        except OSError:  # an SFTP status from the host: it answered
            pass

    def state(self, node: NodePlan) -> dict[str, Any]:
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        conn = self.control(node.host)
        code, out = run(conn, ["cat", f"{log_dir}/{contract.NODE_STATUS}"], timeout=30)
        try:
            record = json.loads(out) if code == 0 else {}
        except ValueError:
            record = {}
        if node.kind is NodeKind.CONTAINER:
            code, out = run(conn, self._ps(node), timeout=30)
            record["alive"] = code == 0 and bool(out.split())
        else:
            probe = OWN_GROUP + 'kill -0 -"$pg" 2>/dev/null'
            code, _ = run(conn, ["sh", "-c", probe, node.pid_file or "/nonexistent"], timeout=30)
            record["alive"] = code == 0
        return record

    def exit_code(self, node: NodePlan) -> int | None:
        live = self.live.get(node.host)
        return live.poll() if live else None

    def wait_output(self, node: NodePlan, timeout_s: float) -> None:
        live = self.live.get(node.host)
        if live:
            live.output.ended.wait(timeout_s)

    def read_output(self, node: NodePlan, offset: int) -> bytes:
        live = self.live.get(node.host)
        if live:
            return live.output.read(offset)
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        try:
            with self._sftp(node.host) as sftp, sftp.open(f"{log_dir}/{contract.NODE_OUTPUT}", "rb") as fh:
                fh.seek(offset)
                return fh.read(OUTPUT_CHUNK)
        except FileNotFoundError:
            return b""
        except (OSError, EOFError, paramiko.SSHException, socket.timeout) as exc:
            raise RunError(f"{node.host}: cannot read the node's output: {str(exc) or type(exc).__name__}") from None

    # ---- stopping and collecting
    def stop(self, node: NodePlan, grace_s: float) -> str | None:
        live = self.live.get(node.host)
        if live:
            return live.stop(grace_s) if live.poll() is None else None
        return self.stop_part(node, grace_s)

    def stop_part(self, node: NodePlan, grace_s: float) -> str | None:
        """Stop what runs of the node's part on its host (whoever started it); what had to be forced."""
        conn = self.control(node.host)
        if node.kind is NodeKind.HOST_PROCESS:
            return self._stop_group(conn, node, grace_s)
        return self._stop_containers(conn, node, grace_s)

    @staticmethod
    def _ps(node: NodePlan) -> list[str]:
        run_id = node.env[contract.RUN_ID]
        return ["docker", "ps", "-q", "--filter", f"label={RUN_LABEL}={run_id}", "--filter", f"label=launch.host={node.host}"]

    def _stop_group(self, conn: fabric.Connection, node: NodePlan, grace_s: float) -> str | None:
        """SIGTERM the process group the node's supervisor leads (it stops torchrun and kills what is
        below it after the grace period), then SIGKILL the group if the supervisor is still there."""
        script = (
            OWN_GROUP + 'kill -TERM -"$pg" 2>/dev/null || exit 0; i=0; '
            'while kill -0 -"$pg" 2>/dev/null && [ "$i" -lt "$1" ]; do sleep 0.2; i=$((i+1)); done; '
            'kill -0 -"$pg" 2>/dev/null || exit 0; kill -KILL -"$pg" 2>/dev/null; echo "forced $pg"; exit 0'
        )
        assert node.pid_file is not None
        wait = grace_s + EXTRA_WAIT_S
        _, out = run(conn, ["sh", "-c", script, node.pid_file, str(int(wait * 5))], timeout=wait + 30)
        forced = re.search(r"^forced (\d+)", out, re.M)
        return f"the node's supervisor (process group {forced.group(1)}) did not end {wait:g} s after SIGTERM" if forced else None

    def _stop_containers(self, conn: fabric.Connection, node: NodePlan, grace_s: float) -> str | None:
        """SIGTERM the node's container (its supervisor stops the ranks), then remove it by force."""
        code, out = run(conn, self._ps(node), timeout=30)
        ids = out.split() if code == 0 else []
        if not ids:
            return None
        run(conn, ["docker", "kill", "--signal=SIGTERM", *ids], timeout=30)
        deadline = time.monotonic() + grace_s + EXTRA_WAIT_S
        while time.monotonic() < deadline:
            code, out = run(conn, self._ps(node), timeout=30)
            if code == 0 and not out.split():
                return None
            time.sleep(0.2)
        code, out = run(conn, self._ps(node), timeout=30)
        if out.split():
            run(conn, ["docker", "rm", "-f", *out.split()], timeout=60)
            return f"the node's container did not end {grace_s + EXTRA_WAIT_S:g} s after SIGTERM and was removed by force"
        return None

    def collect(self, node: NodePlan, plan: LaunchPlan) -> None:
        """Copy the node's logs, metrics and outputs into the run directory, then remove its part of
        the run (its own folder, which keeps checkpoints and outputs for --resume, stays)."""
        conn = self.control(node.host)
        # the host's session, a renewal still under way waiting for it; its reads time out, so a host
        # that goes silent now cannot hang the launcher; longer than a renewal's, as a busy host may
        # pause between the chunks of a large log
        with self._sftp(node.host) as sftp:
            sftp.get_channel().settimeout(COLLECT_TIMEOUT_S)
            try:
                self._collect_files(sftp, node, plan)
            finally:
                sftp.get_channel().settimeout(RENEW_TIMEOUT_S)
        # a run's own folder that kept nothing (its container could not remove its mount points) goes too
        run(conn, ["sh", "-c", 'rm -rf "$0"; rmdir "${0%/*}" "$1/checkpoints" "$1/work" "$1" 2>/dev/null; true',
                   node.node_dir, node.state_dir or "/nonexistent"])

    def _collect_files(self, sftp: paramiko.SFTPClient, node: NodePlan, plan: LaunchPlan) -> None:
        """The node's logs and metrics, and its outputs (the run's working directory), into the run directory."""
        remote_logs, remote_metrics = contract.node_dirs(node.node_dir, node.host)
        for remote, local in ((remote_logs, self.paths.host_logs_dir(node.host)), (remote_metrics, self.paths.metrics_dir)):
            local.mkdir(parents=True, exist_ok=True)
            try:
                entries = sftp.listdir_attr(remote)
            except FileNotFoundError:  # the node never got as far as making it
                continue
            for entry in entries:
                if stat.S_ISREG(entry.st_mode or 0) and not entry.filename.endswith(".tmp"):
                    sftp.get(f"{remote}/{entry.filename}", str(Path(local) / entry.filename))
        if node.state_dir:
            self._collect_outputs(sftp, node, plan)

    def _collect_outputs(self, sftp: paramiko.SFTPClient, node: NodePlan, plan: LaunchPlan) -> None:
        """What the ranks wrote in their working directory (`launcher.run.outputs`), up to the limit."""
        work = f"{node.state_dir}/{contract.STATE_WORK}"
        found = sftp_files(sftp, work)
        outputs.collect(self.paths, node, plan, found, lambda rel, target: sftp.get(f"{work}/{rel}", str(target)))

    def close(self) -> None:
        if self.tidying is not None:
            self.tidying.join(timeout=TIDY_TIMEOUT_S)
        # a lease renewal still finishing in its thread may add or drop a session meanwhile
        with self.lock:
            sftps, self.sftps = list(self.sftps.values()), {}
        for client in sftps:
            _close_quietly(client)
        for conn in list(self.conns.values()):
            conn.close()
