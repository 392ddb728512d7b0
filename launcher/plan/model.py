"""The plan's data: per node, what runs where (`NodePlan`), the whole run (`LaunchPlan`), and the
plan's JSON, which a run directory keeps as plan.json and `--dry-run` prints as text."""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass, field
from typing import Any

SECRET_MASK = "***"
LEASE_S = 10.0  # an attached run's nodes stop when the launcher has not renewed their lease for this long
STOP_GRACE_S = 10.0  # from SIGTERM to SIGKILL when a node stops
PREEMPT_SIGNAL = "SIGUSR2"  # a Slurm job's warning before its time limit or a preemption, passed on to the ranks


@dataclass(frozen=True)
class PlanOptions:
    """What the planner needs to know about this machine and this run."""

    run_dir: str  # absolute path of the run directory on this machine
    local_python: str = "python3"  # the launcher's interpreter, for hosts with address: local
    local_cpus: int = 1
    remote_python: str = "python3"
    image: str | None = None  # the job image's tag, for runtime: docker on remote hosts
    remote_runs: str = "/tmp/launch-runs"  # + "-<ssh user>": where a remote node keeps its part of a run
    local_user: str = "launch"  # the SSH user of hosts whose inventory names none
    nics: dict[str, str] = field(default_factory=dict)  # host -> interface that reaches rank 0
    detach: bool = False  # the run goes on without the launcher: no lease, nodes started in the background
    local_jobs: str = "jobs"  # where this machine keeps runs' own folders: + /<job>/<host>/<run id>
    remote_jobs: str = "/var/tmp/launch-jobs"  # + "-<ssh user>/<job>/<host>/<run id>": a run's own folder on a host
    resume_from: str | None = None  # the run this one starts from (--resume): its checkpoints and outputs
    resume_dirs: dict[str, str] = field(default_factory=dict)  # host -> the own folder of that run there
    code_list: str | None = None  # the workdir record naming the code files, for a local host's copy (workdir.json)
    workdir_hash: str | None = None  # the workdir's copy on each remote host (`workdir_copies`) that ranks run in
    rdzv_port: int | str | None = None  # chosen for a run whose job fixes none (a free port for one-box runs; ports.NODE_RDZV_PORT)
    local_lib: str | None = None  # the folder holding the launcher package, for a local host's own `python`
    shared_dir: str | None = None  # a Slurm cluster's shared folder: every node's part of the run lives there
    container: str = "docker"  # how a Slurm cluster runs runtime: docker: docker | apptainer | pyxis
    image_file: str | None = None  # the job's image in the shared folder, for the nodes of a Slurm cluster


class NodeKind(enum.Enum):
    """Where and how a node's part of a run lives, which says how it is started and stopped."""

    LOCAL = "local"  # this machine: a process group of the launcher's
    CONTAINER = "container"  # a lab host's container, found by the run's label
    HOST_PROCESS = "host-process"  # a lab host's own python: a process group, its id in `pid_file`


@dataclass(frozen=True)
class NodePlan:
    host: str
    kind: NodeKind
    address: str
    node_rank: int
    nproc: int | str  # "auto" when only the node can tell (torchrun counts its cores)
    first_rank: int | None  # global rank of its local rank 0, when every node before it has a known count
    image: str | None  # None: run with the node's own python (runtime host, local runs)
    argv: tuple[str, ...]
    env: dict[str, str]  # what the launcher sets; secrets hold SECRET_MASK here
    secrets: tuple[str, ...]
    cwd: str
    log_dir: str
    metrics_dir: str
    node_dir: str  # the run's directory on the node itself (the run directory, on this machine)
    checkpoint_dir: str = ""  # the run's checkpoint folder on the node (LAUNCH_CHECKPOINT_DIR, as ranks see it, may differ)
    state_dir: str = ""  # the run's own folder on the node: its checkpoints and the ranks' working directory
    resume_dir: str | None = None  # the own folder on the node of the run this one resumes from
    node_env: dict[str, str] = field(default_factory=dict)  # what the node adds for every rank, as a description
    container: str | None = None  # the container's name, for runtime: docker
    pid_file: str | None = None  # holds the process group id, for runtime: host on a lab host
    workdir_copy: str | None = None  # a lab host's copy of the workdir: mounted (docker) or copied from (host)

    @property
    def is_local(self) -> bool:
        return self.kind is NodeKind.LOCAL

    def command_line(self) -> str:
        """The argv as one shell-safe line: the only place a plan's command is quoted."""
        return shlex.join(self.argv)


@dataclass(frozen=True)
class LaunchPlan:
    run_id: str
    job: str
    backend: str
    master_addr: str
    master_port: int
    nnodes: int
    world_size: int | None
    timeout_s: float | None
    nodes: tuple[NodePlan, ...] = field(default_factory=tuple)
    warmup_steps: int = 0
    detached: bool = False
    max_restarts: int = 0
    lease_s: float | None = LEASE_S  # None for a detached run
    image_id: str | None = None  # the job image's ID, for runtime: docker on lab hosts
    workdir_hash: str | None = None  # the content hash of the workdir the ranks run (`launcher.sync`)
    resumed_from: str | None = None  # the run whose checkpoints and outputs this one started from
    outputs: tuple[str, ...] = ("*",)  # globs: what the ranks write in their working directory that comes back
    outputs_limit: int | None = None  # bytes of outputs brought back per host (None: no limit)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job,
            "backend": self.backend,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
            "nnodes": self.nnodes,
            "world_size": self.world_size,
            "timeout_s": self.timeout_s,
            "warmup_steps": self.warmup_steps,
            "detached": self.detached,
            "max_restarts": self.max_restarts,
            "lease_s": self.lease_s,
            "image_id": self.image_id,
            "workdir_hash": self.workdir_hash,
            "resumed_from": self.resumed_from,
            "outputs": list(self.outputs),
            "outputs_limit": self.outputs_limit,
            "nodes": [
                {
                    "host": n.host,
                    "kind": n.kind.value,
                    "address": n.address,
                    "node_rank": n.node_rank,
                    "nproc": n.nproc,
                    "first_rank": n.first_rank,
                    "image": n.image,
                    "command": list(n.argv),
                    "env": dict(n.env),
                    "node_env": dict(n.node_env),
                    "cwd": n.cwd,
                    "log_dir": n.log_dir,
                    "metrics_dir": n.metrics_dir,
                    "node_dir": n.node_dir,
                    "checkpoint_dir": n.checkpoint_dir,
                    "state_dir": n.state_dir,
                    "resume_dir": n.resume_dir,
                    "container": n.container,
                    "pid_file": n.pid_file,
                    "workdir_copy": n.workdir_copy,
                }
                for n in self.nodes
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LaunchPlan":
        """The plan a run directory's plan.json holds (secrets still masked)."""
        nodes = tuple(
            NodePlan(
                host=n["host"], kind=_kind_of(n), address=n["address"], node_rank=n["node_rank"],
                nproc=n["nproc"], first_rank=n["first_rank"], image=n["image"], argv=tuple(n["command"]),
                env=dict(n["env"]), secrets=tuple(k for k, v in n["env"].items() if v == SECRET_MASK), cwd=n["cwd"],
                log_dir=n["log_dir"], metrics_dir=n["metrics_dir"], node_dir=n["node_dir"],
                checkpoint_dir=n.get("checkpoint_dir", ""), container=n["container"], pid_file=n["pid_file"],
                workdir_copy=n.get("workdir_copy"), state_dir=n.get("state_dir", ""), resume_dir=n.get("resume_dir"),
                node_env=dict(n.get("node_env") or {}),
            )
            for n in data["nodes"]
        )
        return cls(
            run_id=data["run_id"], job=data["job"], backend=data["backend"], master_addr=data["master_addr"],
            master_port=data["master_port"], nnodes=data["nnodes"], world_size=data["world_size"],
            timeout_s=data["timeout_s"], nodes=nodes, warmup_steps=data.get("warmup_steps", 0),
            detached=data.get("detached", False), max_restarts=data.get("max_restarts", 0), lease_s=data.get("lease_s"),
            image_id=data.get("image_id"), workdir_hash=data.get("workdir_hash"), resumed_from=data.get("resumed_from"),
            outputs=tuple(data.get("outputs") or ("*",)), outputs_limit=data.get("outputs_limit"),
        )

    def describe(self) -> str:
        """The plan as `--dry-run` prints it: per node, where, the command line and its environment."""
        size = self.world_size if self.world_size is not None else "decided by the nodes"
        lines = [
            f"run {self.run_id}: {self.nnodes} node(s), world size {size}, backend {self.backend}, "
            f"rendezvous {self.master_addr}:{self.master_port}"
        ]
        if self.resumed_from:
            lines.append(f"resumes from run {self.resumed_from}: its checkpoints and outputs are copied into this run's folders")
        for n in self.nodes:
            where = "this machine" if n.is_local else n.address
            lines.append(f"\nnode {n.node_rank}: {n.host} ({where}), {n.nproc} process(es), image {n.image or '-'}")
            lines.append(f"  cd {shlex.quote(n.cwd)}")
            for key, value in sorted(n.env.items()):
                lines.append(f"  {key}={shlex.quote(value)}")
            for key, value in sorted(n.node_env.items()):
                lines.append(f"  {key}={value}    # set on the node")
            lines.append(f"  {n.command_line()}")
        return "\n".join(lines)


def _kind_of(node: dict[str, Any]) -> NodeKind:
    """A plan.json node's kind; plans written before kinds were recorded say it by their fields."""
    if node.get("kind"):
        return NodeKind(node["kind"])
    if node.get("pid_file"):
        return NodeKind.HOST_PROCESS
    return NodeKind.CONTAINER if node.get("image") else NodeKind.LOCAL
