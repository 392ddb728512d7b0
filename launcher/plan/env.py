"""The environment of a node's ranks: what the launcher sets (the job's `env`, the contract's variables,
the NIC, the GPUs, where the launcher's helpers are) and what the node adds, described (README: "What
every rank sees")."""

from __future__ import annotations

from ..node import contract
from ..spec import Host, JobSpec
from .container import CONTAINER_LIB
from .hostproc import REMOTE_LIB
from .layout import NodeLayout
from .model import PREEMPT_SIGNAL, NodeKind, PlanOptions


def launcher_lib(host: Host, where: NodeLayout, options: PlanOptions) -> str:
    """The folder holding the launcher's in-rank helpers as the node sees it ("" when not known)."""
    if where.kind is NodeKind.CONTAINER:
        return CONTAINER_LIB  # in the job image (Dockerfile)
    if where.kind is NodeKind.HOST_PROCESS:
        return f"{where.node_dir}/{REMOTE_LIB}"  # copied there with the run's files
    return options.local_lib or ""


def rank_env(job: JobSpec, host: Host, run_id: str, backend: str, where: NodeLayout, lib: str,
             options: PlanOptions) -> dict[str, str]:
    """What the launcher sets for every rank of the node, secrets not yet among them."""
    env = _contract_env(job, host, run_id, backend, where, options)
    if host.gpu_ids and not where.in_container:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(host.gpu_ids)
    if job.secrets and not host.is_local:
        env[contract.SECRETS_FILE_VAR] = f"{where.seen_dir}/{contract.SECRETS_FILE}"
    python_path = _python_path(job, host, where, lib, options)
    if python_path is not None:
        env["PYTHONPATH"] = python_path
    return env


def _python_path(job: JobSpec, host: Host, where: NodeLayout, lib: str, options: PlanOptions) -> str | None:
    """PYTHONPATH when the launcher must set it so that the node's python finds its helpers; None
    when the job's own (or none) does."""
    job_path = job.env.get("PYTHONPATH")
    if where.kind is NodeKind.CONTAINER:
        # the image's own entry holds the helpers: kept in front of the job's
        return f"{CONTAINER_LIB}:{job_path}" if "PYTHONPATH" in job.env else None
    if where.kind is NodeKind.HOST_PROCESS:
        return ":".join(p for p in (lib, job_path) if p)
    if host.python and host.python != options.local_python and options.local_lib:  # another Python: give it the launcher's helpers
        return ":".join(p for p in (options.local_lib, job_path) if p)
    return None


def _contract_env(job: JobSpec, host: Host, run_id: str, backend: str, where: NodeLayout,
                  options: PlanOptions) -> dict[str, str]:
    """The job's env, then what the launcher sets for every rank (the contract's variables, the NIC)."""
    env = dict(job.env)
    env.setdefault("PYTHONUNBUFFERED", "1")  # live output, and no lines lost when a rank is stopped
    env.update({
        contract.RUN_ID: run_id,
        contract.METRICS_DIR: where.metrics_dir,
        contract.LOG_DIR: where.log_dir,
        contract.HOST: host.name,
        contract.BACKEND: backend,
        contract.CHECKPOINT_DIR: where.seen_checkpoints,
    })
    if options.shared_dir:  # Slurm's warning before its time limit or a preemption (torchrun passes it on)
        env[contract.PREEMPT_SIGNAL] = PREEMPT_SIGNAL
    nic = host.nic or options.nics.get(host.name)
    if nic:
        env["GLOO_SOCKET_IFNAME"] = nic
        if backend == "nccl":
            env["NCCL_SOCKET_IFNAME"] = nic
    return env


def node_env(kind: NodeKind, python: str, lib: str, env: dict[str, str]) -> dict[str, str]:
    """What the node's supervisor and rank wrapper add for every rank, described (values that only the
    node knows are written as the shell would expand them)."""
    described = {contract.ATTEMPT: "0 (1, 2, ... after each restart of the group)"}
    startup = f"{lib}/launcher/node/startup" if lib else "<launch's startup folder>"
    behind = env.get("PYTHONPATH") or (CONTAINER_LIB if kind is NodeKind.CONTAINER else "$PYTHONPATH")
    described["PYTHONPATH"] = f"{startup}:{behind}"
    if kind is not NodeKind.CONTAINER and python.startswith("/"):
        described["PATH"] = f"{python.rsplit('/', 1)[0]}:$PATH"
    return described
