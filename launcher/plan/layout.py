"""Where a node's part of a run lives: its kind, its interpreter, its folders on the node and as its
ranks see them (README: "Multi-host runs", "Your files")."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from ..node import contract
from ..spec import Host, JobSpec
from .model import NodeKind, PlanOptions

CONTAINER_RUN_DIR = "/launch/run"  # where a node's run directory is mounted in its container
CONTAINER_CHECKPOINTS = "/launch/checkpoints"  # where the run's checkpoint folder is mounted
CONTAINER_WORKDIR = "/workspace"  # where the ranks' working directory is mounted
CONTAINER_STATE = "/launch/state"  # where the run's own folder (checkpoints, working directory) is mounted
CONTAINER_CODE = "/launch/code"  # where the host's copy of the workdir is mounted, read-only
CONTAINER_RESUME = "/launch/resume"  # where the folder of the run resumed from is mounted, read-only
RUNS_FOLDER = "runs"  # in a job's folder on a host: <host>/<run id>/, each run's own folder


@dataclass(frozen=True)
class NodeLayout:
    """One node's kind, python and folders: on the node, and as its ranks see them."""

    kind: NodeKind
    python: str  # runs the supervisor, torchrun and the rank wrapper there
    node_dir: str  # the run's directory on the node itself (the run directory, on this machine)
    seen_dir: str  # the run directory as the ranks see it
    state_dir: str  # the run's own folder on the node: its checkpoints and the ranks' working directory
    checkpoint_dir: str  # the run's checkpoint folder on the node
    cwd: str  # the ranks' working directory, as they see it
    seen_checkpoints: str  # the checkpoint folder, as the ranks see it (LAUNCH_CHECKPOINT_DIR)
    log_dir: str
    metrics_dir: str
    resume_dir: str | None  # the own folder on the node of the run this one resumes from
    copy: str | None  # a lab host's copy of the workdir: mounted (docker) or copied from (host)

    @property
    def in_container(self) -> bool:
        return self.kind is NodeKind.CONTAINER


def run_state_dir(root: str, job: str, host: str, run_id: str) -> str:
    """A run's own folder on a host (`launcher.node.workspace`): its checkpoints and working directory.
    Not inside `<job>/<host>/`, the job's checkpoint folder of earlier versions, which emptied it."""
    return f"{root}/{job}/{RUNS_FOLDER}/{host}/{run_id}"


def workdir_copies(remote_jobs: str, user: str, job: str) -> str:
    """Where a host keeps its copies of a job's workdir, each named by its hash (`launcher.sync`)."""
    return f"{remote_jobs}-{user}/{job}/.workdirs"


def shared_folders(shared_dir: str, job: str, run_id: str) -> tuple[str, str, str]:
    """On a Slurm cluster's shared folder: the run's folder (each node's part in a folder of its own),
    the job's folder (runs' own folders: checkpoints, working directories) and its workdir copies."""
    return f"{shared_dir}/runs/{run_id}", f"{shared_dir}/jobs", f"{shared_dir}/jobs/{job}/.workdirs"


def _folders(job: JobSpec, host: Host, run_id: str, options: PlanOptions) -> tuple[str, str, str | None]:
    """The node's run directory, the run's own folder and where the workdir copies are (None: this
    machine, whose ranks run from the workdir's own files)."""
    if options.shared_dir:
        runs, jobs, copies = shared_folders(options.shared_dir, job.name, run_id)
        return f"{runs}/{host.name}", run_state_dir(jobs, job.name, host.name, run_id), copies
    if host.is_local:
        return options.run_dir, run_state_dir(options.local_jobs, job.name, host.name, run_id), None
    user = host.ssh.user or options.local_user
    return (f"{options.remote_runs}-{user}/{run_id}/{host.name}", run_state_dir(f"{options.remote_jobs}-{user}", job.name, host.name, run_id),
            workdir_copies(options.remote_jobs, user, job.name))


def node_kind(job: JobSpec, host: Host) -> NodeKind:
    """This machine; a lab host's container (runtime: docker); or a lab host's own python."""
    if host.is_local:
        return NodeKind.LOCAL
    return NodeKind.CONTAINER if job.runtime == "docker" else NodeKind.HOST_PROCESS


def node_layout(job: JobSpec, host: Host, run_id: str, options: PlanOptions) -> NodeLayout:
    """Where the node on `host` keeps its part of run `run_id`; SpecError for a remote node whose
    workdir copy is not known."""
    kind = node_kind(job, host)
    in_container = kind is NodeKind.CONTAINER
    node_dir, state_dir, copies = _folders(job, host, run_id, options)
    seen_dir = CONTAINER_RUN_DIR if in_container else node_dir
    checkpoint_dir = f"{state_dir}/{contract.STATE_CHECKPOINTS}"
    copy = None
    if copies is not None:
        if not options.workdir_hash:
            raise SpecError(f"{job.path}: a remote node needs the hash of the workdir copied to its host")
        copy = f"{copies}/{options.workdir_hash}"
    python = "python3" if in_container else host.python or (options.local_python if host.is_local else options.remote_python)
    log_dir, metrics_dir = contract.node_dirs(seen_dir, host.name)
    return NodeLayout(
        kind=kind, python=python, node_dir=node_dir, seen_dir=seen_dir, state_dir=state_dir,
        checkpoint_dir=checkpoint_dir,
        cwd=CONTAINER_WORKDIR if in_container else f"{state_dir}/{contract.STATE_WORK}",
        seen_checkpoints=CONTAINER_CHECKPOINTS if in_container else checkpoint_dir,
        log_dir=log_dir, metrics_dir=metrics_dir, resume_dir=options.resume_dirs.get(host.name), copy=copy,
    )
