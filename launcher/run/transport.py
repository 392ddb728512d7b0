"""How a node's part of a run is started, watched, stopped and read back.

A `Transport` starts one node's planned command (the node supervisor, `launcher.node.supervisor`,
with torchrun under it) and hands back a `NodeProcess` for an attached run, or leaves it running in
the background for a detached one. The executor and the commands on existing runs (`status`,
`logs`, `stop`) do not know whether a node is this machine (subprocess, here) or a lab host (SSH,
`launcher.hosts.remote`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any, Iterator, Protocol

from ..errors import RunError
from ..node import contract
from ..node.procs import alive, signal_group
from ..plan import DETACHED_OUTPUT, SUPERVISOR_MODULE, LaunchPlan, NodePlan
from . import outputs
from .rundir import RunPaths

OUTPUT_CHUNK = 8 << 20  # at most this much of a node's output is read at once
EXTRA_WAIT_S = 5.0  # beyond the grace period, for the node's supervisor to finish its own stop


class NodeProcess(Protocol):
    def lines(self) -> Iterator[bytes]:
        """The node's merged output, line by line, until it ends."""

    def poll(self) -> int | None:
        """The exit code once the node's part has ended, else None."""

    def stop(self, grace_s: float) -> str | None:
        """End every process of the node's part: ask, then force after `grace_s` seconds. What had
        to be forced because the node's supervisor did not end (None when it did)."""


class Transport(Protocol):
    def start(self, node: NodePlan, secrets: dict[str, str]) -> NodeProcess:
        """Start `node.argv` with `node.env`, secret values taken from `secrets`, never from the plan."""

    def start_detached(self, node: NodePlan, secrets: dict[str, str]) -> None:
        """Start the node's part in the background; return once it runs."""

    def renew(self, node: NodePlan) -> None:
        """Renew the node's lease (an attached run); raise when the node cannot be reached."""

    def stop(self, node: NodePlan, grace_s: float) -> str | None:
        """Stop the node's part, whether this launcher started it or not; what had to be forced."""

    def state(self, node: NodePlan) -> dict[str, Any]:
        """The node's status record (`contract.NODE_STATUS`, {} before it wrote one) plus `alive`:
        whether any process of the node's part still runs."""

    def read_output(self, node: NodePlan, offset: int) -> bytes:
        """The node's output file (`contract.NODE_OUTPUT`) from `offset` on, at most OUTPUT_CHUNK of it."""

    def collect(self, node: NodePlan, plan: LaunchPlan) -> None:
        """Bring the node's logs, metrics and outputs into the run directory, then remove its files there."""

    def close(self) -> None:
        """Let go of connections."""


def node_environment(node: NodePlan, secrets: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(node.env)
    env.update({name: secrets[name] for name in node.secrets})
    return env


def stop_group(pgid: int, grace_s: float, alive) -> str | None:
    """SIGTERM a node supervisor's process group (the supervisor stops torchrun and, after `grace_s`,
    kills every process below it); SIGKILL the group if the supervisor is still there after that.
    torchrun, in a session of its own, then gets SIGTERM from the supervisor's death."""
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + EXTRA_WAIT_S
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        signal_group(pgid, signal.SIGKILL)
        return f"the node's supervisor (process group {pgid}) did not end {grace_s + EXTRA_WAIT_S:g} s after SIGTERM"
    return None


class LocalProcess:
    """The node supervisor on this machine, in a session of its own so that only the launcher gets Ctrl-C."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen

    def lines(self) -> Iterator[bytes]:
        stream: IO[bytes] | None = self.popen.stdout
        assert stream is not None
        yield from iter(lambda: stream.readline(contract.LINE_MAX + 4096), b"")

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace_s: float) -> str | None:
        # the supervisor stops torchrun and, after its grace period, kills whatever is left of the node
        forced = stop_group(self.popen.pid, grace_s, lambda: self.popen.poll() is None)
        self.popen.wait()
        return forced


class LocalTransport:
    """Runs a node's command on this machine with subprocess."""

    def _popen(self, node: NodePlan, secrets: dict[str, str], stdout) -> subprocess.Popen:
        env = node_environment(node, secrets, dict(os.environ))
        # `python` in the job's command means the launcher's environment, as torchrun's own does.
        if os.path.isabs(node.argv[0]):
            env["PATH"] = os.path.dirname(node.argv[0]) + os.pathsep + env.get("PATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        os.makedirs(contract.node_dirs(node.node_dir, node.host)[0], exist_ok=True)
        try:
            return subprocess.Popen(  # in the run directory: the supervisor enters the ranks' working directory
                list(node.argv), cwd=node.node_dir, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            raise RunError(f"{node.host}: cannot start {node.argv[0]}: {exc.strerror or exc}") from None

    def start(self, node: NodePlan, secrets: dict[str, str]) -> LocalProcess:
        return LocalProcess(self._popen(node, secrets, subprocess.PIPE))

    def start_detached(self, node: NodePlan, secrets: dict[str, str]) -> None:
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, DETACHED_OUTPUT), "ab") as out:
            self._popen(node, secrets, out)  # not waited for: it outlives the launcher

    def renew(self, node: NodePlan) -> None:
        path = os.path.join(node.node_dir, contract.LEASE_FILE)
        with open(path, "a"):
            pass
        os.utime(path, None)

    def state(self, node: NodePlan) -> dict[str, Any]:
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        try:
            with open(os.path.join(log_dir, contract.NODE_STATUS)) as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            record = {}
        pid = record.get("pid")
        record["alive"] = isinstance(pid, int) and record.get("state") == "running" and _is_supervisor(pid)
        return record

    def stop(self, node: NodePlan, grace_s: float) -> str | None:
        pid = self.state(node).get("pid")
        if isinstance(pid, int) and _is_supervisor(pid):
            return stop_group(pid, grace_s, lambda: _is_supervisor(pid))
        return None

    def read_output(self, node: NodePlan, offset: int) -> bytes:
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        try:
            with open(os.path.join(log_dir, contract.NODE_OUTPUT), "rb") as fh:
                fh.seek(offset)
                return fh.read(OUTPUT_CHUNK)
        except OSError:
            return b""

    def collect(self, node: NodePlan, plan: LaunchPlan) -> None:
        """Local ranks write their logs and metrics straight into the run directory; their outputs
        are copied there from the run's own folder (which keeps them, for --resume)."""
        if not node.state_dir:
            return
        paths = RunPaths(Path(node.node_dir))
        work = Path(node.state_dir) / contract.STATE_WORK
        found = []
        for root, _, files in os.walk(work):  # links are not followed, nor brought back
            for name in files:
                path = Path(root) / name
                try:
                    if path.is_file() and not path.is_symlink():
                        found.append((path.relative_to(work).as_posix(), path.stat().st_size))
                except OSError:
                    continue
        outputs.collect(paths, node, plan, found, lambda rel, target: shutil.copy2(work / rel, target))

    def close(self) -> None:
        pass


def _is_supervisor(pid: int) -> bool:
    """Whether `pid` is a live node supervisor (and not another process that got its number)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return alive(pid) and SUPERVISOR_MODULE.encode() in argv
