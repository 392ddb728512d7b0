"""Pure planning: (job, hosts, run id, options) -> what runs on every node, exactly.

Nothing here touches the disk, the network or the clock; `--dry-run` prints a plan and
tests compare plans with golden files.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .spec import Host, JobSpec, backend_for

SECRET_MASK = "***"
LOCAL_MASTER_ADDR = "127.0.0.1"
RANK_WRAPPER_MODULE = "launcher.rankexec"


@dataclass(frozen=True)
class PlanOptions:
    """What the planner needs to know about this machine and this run."""

    run_dir: str  # absolute path of the run directory on this machine
    local_python: str = "python3"  # the launcher's interpreter, for hosts with address: local
    local_cpus: int = 1
    remote_python: str = "python3"


@dataclass(frozen=True)
class NodePlan:
    host: str
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

    @property
    def is_local(self) -> bool:
        return self.address == "local"

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
            "nodes": [
                {
                    "host": n.host,
                    "address": n.address,
                    "node_rank": n.node_rank,
                    "nproc": n.nproc,
                    "first_rank": n.first_rank,
                    "image": n.image,
                    "command": list(n.argv),
                    "env": dict(n.env),
                    "cwd": n.cwd,
                    "log_dir": n.log_dir,
                    "metrics_dir": n.metrics_dir,
                }
                for n in self.nodes
            ],
        }

    def describe(self) -> str:
        """The plan as `--dry-run` prints it: per node, where, the command line and its environment."""
        size = self.world_size if self.world_size is not None else "decided by the nodes"
        lines = [
            f"run {self.run_id}: {self.nnodes} node(s), world size {size}, backend {self.backend}, "
            f"rendezvous {self.master_addr}:{self.master_port}"
        ]
        for n in self.nodes:
            where = "this machine" if n.is_local else n.address
            lines.append(f"\nnode {n.node_rank}: {n.host} ({where}), {n.nproc} process(es), image {n.image or '-'}")
            lines.append(f"  cd {shlex.quote(n.cwd)}")
            for key, value in sorted(n.env.items()):
                lines.append(f"  {key}={shlex.quote(value)}")
            lines.append(f"  {n.command_line()}")
        return "\n".join(lines)


def node_nproc(job: JobSpec, host: Host, local_cpus: int) -> int | str:
    """Processes on one node: the job's count, or `auto`: GPUs on GPU hosts, slots on CPU hosts."""
    if job.nproc_per_node != "auto":
        return job.nproc_per_node
    if host.gpus:
        return host.gpus
    if host.slots:
        return host.slots
    return local_cpus if host.is_local else "auto"


def make_plan(job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions) -> LaunchPlan:
    """Compute every node's command and environment; raise SpecError for a run that cannot work."""
    if not hosts:
        raise SpecError(f"{job.path}: no hosts to run on")
    local = [h for h in hosts if h.is_local]
    if local and len(hosts) > 1:
        raise SpecError(
            f"{job.path}: host '{local[0].name}' has address: local, which only a one-node run can use; "
            "give it the address other hosts reach it by"
        )
    if job.runtime == "docker" and not local:
        raise SpecError(f"{job.path}: runtime: docker on remote hosts is not available yet; use runtime: host")
    backend = backend_for(job, hosts)
    master_addr = LOCAL_MASTER_ADDR if local else hosts[0].address
    counts = [node_nproc(job, h, options.local_cpus) for h in hosts]
    world_size = sum(counts) if all(isinstance(c, int) for c in counts) else None  # type: ignore[arg-type]
    nodes = []
    for rank, (host, nproc) in enumerate(zip(hosts, counts)):
        known = counts[:rank]
        first_rank = sum(known) if all(isinstance(c, int) for c in known) else None  # type: ignore[arg-type]
        nodes.append(_node(job, host, rank, nproc, first_rank, len(hosts), master_addr, backend, run_id, options))
    return LaunchPlan(
        run_id=run_id,
        job=job.name,
        backend=backend,
        master_addr=master_addr,
        master_port=job.rdzv_port,
        nnodes=len(hosts),
        world_size=world_size,
        timeout_s=job.timeout_s,
        nodes=tuple(nodes),
    )


def _node(
    job: JobSpec,
    host: Host,
    node_rank: int,
    nproc: int | str,
    first_rank: int | None,
    nnodes: int,
    master_addr: str,
    backend: str,
    run_id: str,
    options: PlanOptions,
) -> NodePlan:
    python = host.python or (options.local_python if host.is_local else options.remote_python)
    log_dir = f"{options.run_dir}/logs/{host.name}"
    metrics_dir = f"{options.run_dir}/metrics"
    torchrun = [
        python, "-m", "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={nproc}",
        f"--master-addr={master_addr}",
        f"--master-port={job.rdzv_port}",
        f"--max-restarts={job.max_restarts}",
        f"--rdzv-id={run_id}",
        "--no-python",
    ]
    wrapper = [python, "-m", RANK_WRAPPER_MODULE]
    env = dict(job.env)
    env.update(
        LAUNCH_RUN_ID=run_id,
        LAUNCH_METRICS_DIR=metrics_dir,
        LAUNCH_LOG_DIR=log_dir,
        LAUNCH_HOST=host.name,
        LAUNCH_BACKEND=backend,
    )
    if host.nic:
        env["GLOO_SOCKET_IFNAME"] = host.nic
        if backend == "nccl":
            env["NCCL_SOCKET_IFNAME"] = host.nic
    if host.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(host.gpu_ids)
    for name in job.secrets:
        env[name] = SECRET_MASK
    return NodePlan(
        host=host.name,
        address=host.address,
        node_rank=node_rank,
        nproc=nproc,
        first_rank=first_rank,
        image=None,
        argv=tuple(torchrun + wrapper + list(job.command)),
        env=env,
        secrets=job.secrets,
        cwd=str(job.workdir),
        log_dir=log_dir,
        metrics_dir=metrics_dir,
    )
