"""What the user wrote: job.yaml (`job`) and cluster.yaml (`cluster`), loaded and checked, and the hosts
a run of the job uses (README: "What you write")."""

from __future__ import annotations

import os

from ..errors import SpecError
from .cluster import (HOST_KEY_POLICIES, LOCAL_ADDRESS, MAX_GPUS, MAX_NPROC_PER_NODE, MAX_PROCS_PER_CPU, ClusterSpec, Host,
                      SshSettings, load_cluster, local_cluster)
from .job import (BACKENDS, DEFAULT_HANG_WARNING_S, DEFAULT_OUTPUTS, DEFAULT_OUTPUTS_LIMIT, DEFAULT_WARMUP_STEPS,
                  MAX_OUTPUTS_LIMIT, MAX_RESTARTS, MAX_TIMEOUT_S, MAX_WARMUP_STEPS, OWNED_ENV, RUNTIMES, ImageSpec, JobSpec,
                  check_env_name, load_job)
from .slurm import CONTAINERS, SlurmSpec, slurm_nodes

__all__ = [
    "BACKENDS", "CONTAINERS", "DEFAULT_HANG_WARNING_S", "DEFAULT_OUTPUTS", "DEFAULT_OUTPUTS_LIMIT", "DEFAULT_WARMUP_STEPS",
    "HOST_KEY_POLICIES", "LOCAL_ADDRESS", "MAX_GPUS", "MAX_NPROC_PER_NODE", "MAX_OUTPUTS_LIMIT", "MAX_PROCS_PER_CPU",
    "MAX_RESTARTS", "MAX_TIMEOUT_S", "MAX_WARMUP_STEPS", "OWNED_ENV", "RUNTIMES", "ClusterSpec", "Host", "ImageSpec",
    "JobSpec", "SlurmSpec", "SshSettings", "backend_for", "check_env_name", "load_cluster", "load_job", "local_cluster",
    "select_hosts", "slurm_nodes",
]


def select_hosts(job: JobSpec, cluster: ClusterSpec, nodes: int | None = None, nodes_label: str | None = None) -> tuple[Host, ...]:
    """The hosts a run uses: the first `nodes` of the inventory, checked against the job; for a Slurm
    inventory, the slots of the nodes the scheduler will pick."""
    count = nodes if nodes is not None else job.nodes
    where = nodes_label or f"{job.path}: nodes"
    if count is not None and count < 1:
        raise SpecError(f"{where}: expected a positive integer, got {count}")
    if cluster.slurm is not None:
        return _slurm_hosts(job, cluster, count or 1)
    available = len(cluster.hosts)
    if count is not None and count > available:
        plural = "host" if available == 1 else "hosts"
        raise SpecError(f"{where}: {count} is more than the {available} {plural} in {cluster.label}")
    hosts = cluster.hosts[: count or available]
    if isinstance(job.nproc_per_node, int):
        for h in hosts:
            limit, what = _process_bound(h, cluster)
            if limit is not None and job.nproc_per_node > limit:
                raise SpecError(f"{job.path}: nproc_per_node: {job.nproc_per_node} is more than {what}")
    if job.backend == "nccl":
        cpu_hosts = [h.name for h in hosts if h.gpus == 0]
        if cpu_hosts:
            raise SpecError(f"{job.path}: backend: nccl needs GPUs, but host '{cpu_hosts[0]}' in {cluster.label} has gpus: 0; use gloo or auto")
    if isinstance(job.nproc_per_node, int) and backend_for(job, hosts) == "nccl":
        for h in hosts:
            if job.nproc_per_node > h.gpus:
                gpus = "1 GPU" if h.gpus == 1 else f"{h.gpus} GPUs"
                raise SpecError(
                    f"{job.path}: nproc_per_node: {job.nproc_per_node} is more than the {gpus} of host '{h.name}'; nccl needs one GPU per process"
                )
    return hosts


def _slurm_hosts(job: JobSpec, cluster: ClusterSpec, count: int) -> tuple[Host, ...]:
    """`count` node slots of a Slurm inventory (as many as asked: the scheduler says whether it has them),
    checked as hosts are: what one node offers bounds nproc_per_node."""
    slurm = cluster.slurm
    assert slurm is not None
    nproc = job.nproc_per_node if isinstance(job.nproc_per_node, int) else None
    if nproc is not None and slurm.cpus_per_node is not None and nproc > slurm.cpus_per_node:
        raise SpecError(f"{job.path}: nproc_per_node: {nproc} is more than the {slurm.cpus_per_node} CPU(s) of a node "
                        f"(slurm.cpus_per_node in {cluster.label})")
    if job.backend == "nccl" and slurm.gpus_per_node == 0:
        raise SpecError(f"{job.path}: backend: nccl needs GPUs, but {cluster.label} has slurm.gpus_per_node: 0; "
                        "use gloo or auto, or give the nodes' GPUs")
    hosts = slurm_nodes(slurm, count)
    if nproc is not None and backend_for(job, hosts) == "nccl" and nproc > slurm.gpus_per_node:
        gpus = "1 GPU" if slurm.gpus_per_node == 1 else f"{slurm.gpus_per_node} GPUs"
        raise SpecError(f"{job.path}: nproc_per_node: {nproc} is more than the {gpus} of a node (slurm.gpus_per_node "
                        f"in {cluster.label}); nccl needs one GPU per process")
    return hosts


def _process_bound(host: Host, cluster: ClusterSpec) -> tuple[int | None, str]:
    """How many processes a node on `host` may run, and how a message says it: the slots the inventory
    gives; for this machine without them (--local, or `address: local` with no slots) 8 per core, which
    a job may oversubscribe; None for a lab host without slots, whose cores are its own."""
    if cluster.path is None:  # --local: slots are this machine's cores
        return host.slots * MAX_PROCS_PER_CPU, f"{MAX_PROCS_PER_CPU} per core of this machine's {host.slots}"
    if host.slots is not None:
        return host.slots, f"the {host.slots} slot(s) of host '{host.name}' in {cluster.label}"
    if host.is_local:
        cores = os.cpu_count() or 1
        return cores * MAX_PROCS_PER_CPU, (f"{MAX_PROCS_PER_CPU} per core of this machine's {cores} (host '{host.name}' "
                                           f"in {cluster.label} gives no slots, so its cores bound it)")
    return None, ""


def backend_for(job: JobSpec, hosts: tuple[Host, ...]) -> str:
    """gloo or nccl: `auto` means nccl only when every host has GPUs."""
    if job.backend != "auto":
        return job.backend
    return "nccl" if hosts and all(h.gpus > 0 for h in hosts) else "gloo"
