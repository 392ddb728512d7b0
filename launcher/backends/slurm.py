"""The Slurm backend: a run is one batch job that Slurm places (`launcher.plan.slurm` writes its
script); every node's part lives in the cluster's shared folder, where the launcher reads its output
and state and renews its lease, as it does on a lab host's disk.

The login side (where sbatch, squeue, scontrol and scancel run) is this machine or a host reached
over SSH (`slurmctl`); the shared folder is read and written from there (`shared`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import RunError
from ..image.build import build_here, shipped_files
from ..node import contract
from ..plan import LaunchPlan, NodeKind, NodePlan, PlanOptions, make_plan
from ..plan.layout import node_layout, shared_folders
from ..plan.ports import NODE_RDZV_PORT
from ..plan.slurm import NODE_NIC, batch_script, image_file
from ..record import outputs
from ..record.outcome import Phases
from ..record.rundir import RunPaths
from ..spec import Host, JobSpec, SlurmSpec
from ..sync.manifest import Manifest
from .base import EXTRA_WAIT_S
from .shared import SharedFolder, shared_folder
from .slurmctl import JobInfo, SlurmCtl, one_line

SCRIPT = "job.sbatch"  # the batch script, in the run's shared folder and in its run directory
ALLOCATION = "allocation.json"  # written by the batch script when the job starts: its nodes, its attempt
ASK_EVERY_S = 2.0  # Slurm is asked about the job at most this often
CANCEL_WAIT_S = 15.0  # after scancel, how long the launcher waits for the job to leave its nodes (a lost one never tells)
REQUEUED_STATES = ("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING")
NODE_END_WAIT_S = 15.0  # a job that ended gives its nodes' supervisors this long to write how they ended


class SlurmBackend:
    """Runs a plan as one Slurm batch job."""

    name = "slurm"

    def __init__(self, slurm: SlurmSpec, paths: RunPaths, ctl: SlurmCtl | None = None,
                 shared: SharedFolder | None = None) -> None:
        self.slurm, self.paths = slurm, paths
        self.ctl = ctl or SlurmCtl(slurm)
        self.shared = shared or shared_folder(slurm, self.ctl)
        self.lock = threading.Lock()
        self.job_id: str | None = _recorded(paths).get("job_id")
        self.info: JobInfo | None = None
        self.asked = 0.0
        self.cancelled = False
        self.ended_at: float | None = None  # when the launcher first saw the job ended
        self.attempt_from = 0.0  # when Slurm last requeued the job: nodes' ends before are an earlier attempt's

    # ---- before the run
    def prepare(self, job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions, manifest: Manifest,
                say: Callable[[str], None], phases: Phases) -> LaunchPlan:
        """The job's code and image in the shared folder, the run's folders and its batch script;
        nothing is copied where sbatch cannot be run."""
        code, out = self.ctl.run(["sbatch", "--version"], timeout=30)
        if code != 0:
            raise RunError(f"slurm: sbatch does not answer on {self.ctl.where}: {one_line(out)} (launch check tells more)")
        with phases.timing("workdir"):
            copies = shared_folders(self.slurm.shared_dir, job.name, run_id)[2]
            sent = self.shared.copy_workdir(copies, job.workdir, manifest)
            say(f"slurm: workdir {manifest.hash} in {copies}" + (" (there already)" if sent is None else f": {sent}"))
        image_id = self._image(job, phases, say) if job.runtime == "docker" else None
        plan, script = slurm_plan(self.slurm, job, hosts, run_id, options, image_id)
        self.shared.make_run(plan, shipped_files() if plan.nodes[0].kind is NodeKind.HOST_PROCESS else [])
        self.shared.write(f"{run_folder(plan)}/{SCRIPT}", script.encode())
        return plan

    def _image(self, job: JobSpec, phases: Phases, say: Callable[[str], None]) -> str:
        """Build the job's image here; put it in the shared folder unless it is there (by its id)."""
        client, built = build_here(job, say, phases)
        path = image_file(self.slurm.shared_dir, built.id, self.slurm.container)
        with phases.timing("ship"):
            sent = self.shared.put_image(client, built.tag, path, self.slurm.container)
        say(f"slurm: image in {path}" + (" (there already)" if sent is None else f": {sent}"))
        return built.id

    def describe(self, job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions, manifest: Manifest) -> str:
        """For --dry-run: the batch script the run would submit (its image's id is known once built)."""
        plan, script = slurm_plan(self.slurm, job, hosts, run_id, options, "<image id>" if job.runtime == "docker" else None)
        return f"the batch script ({run_folder(plan)}/{SCRIPT}), submitted with sbatch on {self.slurm.login}:\n\n{script}"

    # ---- the run
    def submit(self, plan: LaunchPlan, secrets: dict[str, str], attached: bool) -> None:
        """The secrets files (0600, in each node's folder), then sbatch; the job id is kept in handle.json."""
        for node in plan.nodes:
            if node.secrets:
                data = contract.format_secrets({name: secrets[name] for name in node.secrets})
                self.shared.write(f"{node.node_dir}/{contract.SECRETS_FILE}", data, private=True)
        script = f"{run_folder(plan)}/{SCRIPT}"
        try:
            (self.paths.root / SCRIPT).write_bytes(self.shared.read(script))
        except OSError:
            pass
        unset = [arg for name in sorted(secrets) for arg in ("-u", name)]  # never in the job's environment
        lease = [f"LAUNCH_LEASE_S={plan.lease_s:g}"] if attached and plan.lease_s else []
        self.job_id = self.ctl.submit(script, env=[*unset, *lease])
        _record(self.paths, {"job_id": self.job_id, "submitted": time.time(), "script": script})
        print(f"launch: submitted Slurm job {self.job_id}", file=sys.stderr, flush=True)

    def job(self, fresh: bool = False) -> JobInfo | None:
        """What Slurm last said of the job (asked at most every ASK_EVERY_S); a controller that does
        not answer changes nothing: the job is not taken for ended."""
        with self.lock:
            if self.job_id is None:
                return None
            if fresh or time.monotonic() - self.asked > ASK_EVERY_S:
                self.asked = time.monotonic()
                try:
                    self.info = self.ctl.job(self.job_id)
                except RunError:
                    return self.info
                if (self.info is None or self.info.ended) and self.ended_at is None:
                    self.ended_at = time.monotonic()
            return self.info

    def queued(self) -> str | None:
        """While the job waits in Slurm's queue: that, and why."""
        info = self.job()
        if info is None or info.state != "PENDING":
            return None
        return f"Slurm job {info.job_id} is pending" + (f" ({info.reason})" if info.reason else "")

    def requeued(self) -> bool | None:
        """Whether Slurm put the job back in its queue (a preemption, `scontrol requeue`): its nodes'
        ends so far are then an earlier attempt's; None while it is still ending."""
        info = self.job()
        if info is None or info.ended:
            return False
        if info.state in REQUEUED_STATES:
            self.attempt_from = time.time()
            self.ended_at = None
            return True
        return None

    def renew(self, node: NodePlan) -> None:
        self.shared.touch(f"{node.node_dir}/{contract.LEASE_FILE}")

    def _status(self, node: NodePlan) -> dict[str, Any]:
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        try:
            return json.loads(self.shared.read(f"{log_dir}/{contract.NODE_STATUS}"))
        except (OSError, ValueError):
            return {}

    def exit_code(self, node: NodePlan) -> int | None:
        """The node's supervisor's exit code once it has written it; once the job has ended without
        it (the node never started, or was killed), a failure."""
        status = self._status(node)
        if (status.get("end_time") or 0) < self.attempt_from:  # how an attempt before a requeue ended
            status = {}
        if status.get("state") not in (None, contract.RUNNING):
            code = status.get("exit_code")
            return code if isinstance(code, int) else 1
        info = self.job()
        if self.ended_at is None:  # Slurm has not said that the job ended
            return None
        if time.monotonic() - self.ended_at < NODE_END_WAIT_S and status:
            return None  # its supervisor may still be writing how it ended
        self._say_job_end(node, info)
        return 1  # its supervisor did not say how it ended: it never started, or was killed

    def _say_job_end(self, node: NodePlan, info: JobInfo | None) -> None:
        """Into the node's output (once): how the job ended, where its supervisor said nothing of it."""
        marker = f"{node.node_dir}/.job-end-said"
        if self.shared.exists(marker):
            return
        self.shared.write(marker, b"")
        how = f"{info.state} (exit code {info.exit_code})" if info else "and left Slurm's records"
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        line = f"Slurm job {self.job_id} ended {how} before {node.host}'s part of the run ended on its own\n"
        self.shared.append(f"{log_dir}/{contract.NODE_OUTPUT}", contract.agent_prefix(node.host) + line.encode())

    def state(self, node: NodePlan) -> dict[str, Any]:
        """The node's own record; while the job waits, why (`waiting`); a job that ended before the
        node started: how it ended."""
        record = self._status(node)
        info = self.job(fresh=True)
        running = record.get("state") in (None, contract.RUNNING) or (info is not None and info.state in REQUEUED_STATES)
        record["alive"] = running and info is not None and not info.ended
        if info is not None and info.state == "PENDING":
            record["waiting"] = self.queued()
        if not record.get("state") and info is not None and info.ended:
            record["state"] = contract.STOPPED if info.state == "CANCELLED" else contract.FAILED
            record["reason"] = f"Slurm job {info.job_id} ended {info.state} before {node.host} started"
        return record

    def read_output(self, node: NodePlan, offset: int) -> bytes:
        log_dir, _ = contract.node_dirs(node.node_dir, node.host)
        return self.shared.read_from(f"{log_dir}/{contract.NODE_OUTPUT}", offset)

    def wait_output(self, node: NodePlan, timeout_s: float) -> None:
        return None  # the output is a file in the shared folder: all there once the node has ended

    def stop(self, node: NodePlan, grace_s: float) -> str | None:
        """scancel the job (once, for every node): SIGTERM to every node's part, SIGKILL after the
        cluster's KillWait; then wait for it to leave its nodes."""
        with self.lock:
            first = not self.cancelled
            self.cancelled = True
        if first and self.job_id:
            info = self.job(fresh=True)
            if info is not None and not info.ended:
                self.ctl.cancel(self.job_id)
        deadline = time.monotonic() + grace_s + EXTRA_WAIT_S + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            info = self.job(fresh=True)
            if info is None or info.ended:
                return None
            time.sleep(0.5)
        waited = grace_s + EXTRA_WAIT_S + CANCEL_WAIT_S
        return f"Slurm job {self.job_id} was still {info.state if info else 'there'} {waited:g} s after scancel"

    def collect(self, node: NodePlan, plan: LaunchPlan) -> None:
        """The node's logs and metrics, and what its ranks wrote, into the run directory; its secrets
        file goes. The shared run folder keeps the batch script, Slurm's output and the node's logs."""
        log_dir, metrics_dir = contract.node_dirs(node.node_dir, node.host)
        self.shared.fetch_files(log_dir, self.paths.host_logs_dir(node.host))
        self.shared.fetch_files(metrics_dir, self.paths.metrics_dir)
        self.shared.remove(f"{node.node_dir}/{contract.SECRETS_FILE}")
        if node.state_dir:
            work = f"{node.state_dir}/{contract.STATE_WORK}"
            found = self.shared.walk(work)
            outputs.collect(self.paths, node, plan, found, lambda rel, target: self.shared.fetch(f"{work}/{rel}", target))
        if node.node_rank == 0:
            folder = run_folder(plan)
            for name in self.shared.names(folder):
                if name.startswith("slurm-") or name == ALLOCATION:
                    self.shared.fetch(f"{folder}/{name}", self.paths.root / name)

    def facts(self, plan: LaunchPlan) -> dict[str, Any]:
        """What summary.json says of the Slurm job: its id, its nodes, how long it waited in the queue."""
        facts: dict[str, Any] = {"slurm_job_id": self.job_id}
        try:
            allocation = json.loads(self.shared.read(f"{run_folder(plan)}/{ALLOCATION}"))
        except (OSError, ValueError):
            return facts
        facts["slurm_nodes"] = str(allocation.get("nodes", "")).split()
        submitted = _recorded(self.paths).get("submitted")
        if isinstance(submitted, (int, float)) and isinstance(allocation.get("start_time"), (int, float)):
            facts["queued_s"] = max(0.0, allocation["start_time"] - submitted)
        return facts

    def close(self) -> None:
        self.ctl.close()


def slurm_plan(slurm: SlurmSpec, job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions,
               image_id: str | None) -> tuple[LaunchPlan, str]:
    """The run's plan on the cluster and its batch script (pure). The plan has no timeout of its own:
    the job's --time is Slurm's clock, which starts when the job does, not when it is queued."""
    options = dataclasses.replace(
        options, shared_dir=slurm.shared_dir, container=slurm.container,
        nics={} if slurm.nic else {host.name: NODE_NIC for host in hosts},  # found on each node
        rdzv_port=None if job.rdzv_port else NODE_RDZV_PORT, remote_python=slurm.python or "python3",
        image_file=image_file(slurm.shared_dir, image_id, slurm.container) if image_id else None,
    )
    plan = dataclasses.replace(make_plan(job, hosts, run_id, options), image_id=image_id, timeout_s=None)
    where = node_layout(job, hosts[0], run_id, options)
    return plan, batch_script(plan, job, slurm, options, where, run_folder(plan))


def run_folder(plan: LaunchPlan) -> str:
    """The run's folder in the shared folder: every node's own folder is in it."""
    return str(Path(plan.nodes[0].node_dir).parent)


def _recorded(paths: RunPaths) -> dict[str, Any]:
    try:
        found = json.loads(paths.handle_file.read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def _record(paths: RunPaths, fields: dict[str, Any]) -> None:
    from ..record import rundir

    rundir.write_json(paths.handle_file, {**_recorded(paths), "backend": SlurmBackend.name, **fields})
