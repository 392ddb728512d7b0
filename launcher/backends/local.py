"""The one-box backend: every node's part of a run is a process group on this machine.

The node supervisor runs with subprocess, in a session of its own so that only the launcher gets
Ctrl-C; the ranks write their logs and metrics straight into the run directory, and their outputs
are copied there from the run's own folder (which keeps them, for --resume).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from ..errors import RunError
from ..node import contract
from ..node.procs import alive, signal_group, terminate
from ..hosts.ports import check_ports_free
from ..plan import DETACHED_OUTPUT, STOP_GRACE_S, SUPERVISOR_MODULE, LaunchPlan, NodePlan, PlanOptions, make_plan
from ..plan.ports import first_host_ports
from ..record import outputs
from ..record.outcome import Phases
from ..record.rundir import RunPaths
from ..spec import Host, JobSpec
from ..sync.manifest import Manifest
from .base import EXTRA_WAIT_S, OUTPUT_CHUNK, LiveOutput, WithoutScheduler, start_every_node, node_environment


def stop_group(pgid: int, grace_s: float, running: Callable[[], bool]) -> str | None:
    """SIGTERM a node supervisor's process group (the supervisor stops torchrun and, after `grace_s`,
    kills every process below it); SIGKILL the group if the supervisor is still there after that.
    torchrun, in a session of its own, then gets SIGTERM from the supervisor's death."""
    if terminate(lambda signum: signal_group(pgid, signum), running, grace_s + EXTRA_WAIT_S):
        return f"the node's supervisor (process group {pgid}) did not end {grace_s + EXTRA_WAIT_S:g} s after SIGTERM"
    return None


class LocalBackend(WithoutScheduler):
    """Runs a node's command on this machine with subprocess."""

    name = "local"

    def __init__(self) -> None:
        self.live: dict[str, tuple[subprocess.Popen, LiveOutput]] = {}  # host -> its attached supervisor

    def prepare(self, job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions, manifest: Manifest,
                say: Callable[[str], None], phases: Phases) -> LaunchPlan:
        check_ports_free("this machine", first_host_ports(job, hosts))
        return make_plan(job, hosts, run_id, options)

    def describe(self, job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions, manifest: Manifest) -> str:
        return make_plan(job, hosts, run_id, options).describe() + "\n"  # nothing is built or sent


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

    def submit(self, plan: LaunchPlan, secrets: dict[str, str], attached: bool) -> None:
        start_every_node(plan, lambda node: self._start(node, secrets, attached), lambda node: self.stop(node, STOP_GRACE_S))

    def _start(self, node: NodePlan, secrets: dict[str, str], attached: bool) -> None:
        if attached:
            popen = self._popen(node, secrets, subprocess.PIPE)
            assert popen.stdout is not None
            self.live[node.host] = (popen, LiveOutput(lambda: popen.stdout.read1(1 << 16)))  # type: ignore[union-attr]
            return
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, DETACHED_OUTPUT), "ab") as out:
            self._popen(node, secrets, out)  # not waited for: it outlives the launcher

    def renew(self, node: NodePlan) -> None:
        path = os.path.join(node.node_dir, contract.LEASE_FILE)
        with open(path, "a"):
            pass
        os.utime(path, None)

    def exit_code(self, node: NodePlan) -> int | None:
        live = self.live.get(node.host)
        return live[0].poll() if live else None

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

    def read_output(self, node: NodePlan, offset: int) -> bytes:
        live = self.live.get(node.host)
        if live:
            return live[1].read(offset)
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        try:
            with open(os.path.join(log_dir, contract.NODE_OUTPUT), "rb") as fh:
                fh.seek(offset)
                return fh.read(OUTPUT_CHUNK)
        except OSError:
            return b""

    def wait_output(self, node: NodePlan, timeout_s: float) -> None:
        live = self.live.get(node.host)
        if live:
            live[1].ended.wait(timeout_s)

    def stop(self, node: NodePlan, grace_s: float) -> str | None:
        live = self.live.get(node.host)
        if live:
            popen = live[0]
            if popen.poll() is not None:
                return None
            forced = stop_group(popen.pid, grace_s, lambda: popen.poll() is None)
            popen.wait()
            return forced
        pid = self.state(node).get("pid")
        if isinstance(pid, int) and _is_supervisor(pid):
            return stop_group(pid, grace_s, lambda: _is_supervisor(pid))
        return None

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
        for popen, output in self.live.values():
            if popen.stdout is not None and output.ended.is_set():  # a read under way would hold the close
                popen.stdout.close()


def _is_supervisor(pid: int) -> bool:
    """Whether `pid` is a live node supervisor (and not another process that got its number)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return alive(pid) and SUPERVISOR_MODULE.encode() in argv
