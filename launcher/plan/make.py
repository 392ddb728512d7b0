"""(job, hosts, run id, options) -> the plan: every node's command line and environment, exactly."""

from __future__ import annotations

from ..errors import SpecError
from ..spec import Host, JobSpec, backend_for
from .command import rank_argv
from .container import container_name, docker_run, mounts
from .env import launcher_lib, node_env, rank_env
from .hostproc import host_process, pid_file
from .layout import node_layout
from .model import LEASE_S, SECRET_MASK, LaunchPlan, NodeKind, NodePlan, PlanOptions
from .ports import rdzv_port
from .slurm import node_prefix

LOCAL_MASTER_ADDR = "127.0.0.1"


def node_nproc(job: JobSpec, host: Host, local_cpus: int) -> int | str:
    """Processes on one node: the job's count, or `auto`: GPUs on GPU hosts, slots on CPU hosts."""
    if job.nproc_per_node != "auto":
        return job.nproc_per_node
    if host.gpus:
        return host.gpus
    if host.slots:
        return host.slots
    return local_cpus if host.is_local else "auto"


def check_hosts(job: JobSpec, hosts: tuple[Host, ...]) -> None:
    """SpecError for hosts a run cannot use together."""
    if not hosts:
        raise SpecError(f"{job.path}: no hosts to run on")
    local = [h for h in hosts if h.is_local]
    if local and len(hosts) > 1:
        raise SpecError(
            f"{job.path}: host '{local[0].name}' has address: local, which only a one-node run can use; "
            "give it the address other hosts reach it by"
        )


def make_plan(job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions) -> LaunchPlan:
    """Compute every node's command and environment; raise SpecError for a run that cannot work."""
    check_hosts(job, hosts)
    local = [h for h in hosts if h.is_local]
    if job.runtime == "docker" and not local and not options.image:
        raise SpecError(f"{job.path}: runtime: docker needs the job's image tag to plan remote nodes")
    backend = backend_for(job, hosts)
    master_addr = LOCAL_MASTER_ADDR if local else hosts[0].net_address
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
        master_port=rdzv_port(job, options),
        nnodes=len(hosts),
        world_size=world_size,
        timeout_s=job.timeout_s,
        nodes=tuple(nodes),
        warmup_steps=job.warmup_steps,
        detached=options.detach,
        max_restarts=job.max_restarts,
        lease_s=None if options.detach else LEASE_S,
        resumed_from=options.resume_from,
        outputs=job.outputs,
        outputs_limit=job.outputs_limit,
    )


def _node(job: JobSpec, host: Host, node_rank: int, nproc: int | str, first_rank: int | None, nnodes: int,
          master_addr: str, backend: str, run_id: str, options: PlanOptions) -> NodePlan:
    """One node's plan: where it lives (`layout`), what it runs (`command`), with what environment
    (`env`), started as its kind starts (`container`, `hostproc`, or as it is on this machine)."""
    where = node_layout(job, host, run_id, options)
    argv = rank_argv(job, host, where, node_rank, nproc, nnodes, master_addr, run_id, options)
    lib = launcher_lib(host, where, options)
    env = rank_env(job, host, run_id, backend, where, lib, options)
    container = pid_path = None
    if options.shared_dir:  # a Slurm node: srun starts it, in the cluster's kind of container
        container = container_name(run_id, host) if where.in_container else None
        argv = node_prefix(host, run_id, container, where, env, options) + argv
    elif where.kind is NodeKind.CONTAINER:
        container = container_name(run_id, host)
        argv = docker_run(host, run_id, container, mounts(where), env, options) + argv
    elif where.kind is NodeKind.HOST_PROCESS:
        pid_path = pid_file(host, where)
        argv = host_process(where, pid_path, env, options) + argv
    env.update({name: SECRET_MASK for name in job.secrets})  # the record's: the values go by a file (rankexec)
    return NodePlan(
        host=host.name, kind=where.kind, address=host.address, node_rank=node_rank, nproc=nproc,
        first_rank=first_rank, image=options.image if where.in_container else None, argv=tuple(argv), env=env,
        secrets=job.secrets, cwd=where.cwd, log_dir=where.log_dir, metrics_dir=where.metrics_dir,
        node_dir=where.node_dir, checkpoint_dir=where.checkpoint_dir, state_dir=where.state_dir,
        resume_dir=where.resume_dir, node_env=node_env(where.kind, where.python, lib, env), container=container, pid_file=pid_path,
        workdir_copy=where.copy,
    )
