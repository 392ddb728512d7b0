"""What a node runs, wherever it runs: the node supervisor, under it torchrun, under that the rank
wrapper and the job's command (README: "Long runs", the node supervisor; "Multi-host runs")."""

from __future__ import annotations

from ..spec import Host, JobSpec
from .layout import CONTAINER_CODE, CONTAINER_RESUME, CONTAINER_STATE, CONTAINER_WORKDIR, NodeLayout
from .model import LEASE_S, PREEMPT_SIGNAL, STOP_GRACE_S, NodeKind, PlanOptions
from .ports import rdzv_port, supervisors_port

RANK_WRAPPER_MODULE = "launcher.node.rankexec"
SUPERVISOR_MODULE = "launcher.node.supervisor"
TORCHRUN_MODULE = "launcher.node.torchrun"  # torchrun, ended without its teardown once it succeeded
PEER_TIMEOUT_S = 10.0  # a node that has not been heard from for this long is lost; the others stop


def rank_argv(job: JobSpec, host: Host, where: NodeLayout, node_rank: int, nproc: int | str, nnodes: int,
              master_addr: str, run_id: str, options: PlanOptions) -> list[str]:
    """The node's command line, but for how its kind starts it: supervisor, `--`, torchrun, the rank
    wrapper and the job's command."""
    supervisor = _supervisor(job, host, where, node_rank, nnodes, master_addr, options) + _folders(job, host, where, options)
    torchrun = _torchrun(job, host, where.python, node_rank, nproc, nnodes, master_addr, run_id, options)
    return supervisor + ["--"] + torchrun + [where.python, "-m", RANK_WRAPPER_MODULE, *job.command]


def _torchrun(job: JobSpec, host: Host, python: str, node_rank: int, nproc: int | str, nnodes: int, master_addr: str,
              run_id: str, options: PlanOptions) -> list[str]:
    """torchrun's command line on one node: its rank, the rendezvous on the first node, no restarts of its own."""
    torchrun = [
        python, "-m", TORCHRUN_MODULE,
        f"--nnodes={nnodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={nproc}",
        f"--master-addr={master_addr}",
        f"--master-port={rdzv_port(job, options)}",
        "--max-restarts=0",  # the node supervisors restart the whole group, on every node
        f"--rdzv-id={run_id}",
    ]
    if not host.is_local:
        torchrun.append(f"--local-addr={host.net_address}")
    if options.shared_dir:  # torchrun hands Slurm's warning to its ranks (its own env variable is overwritten)
        torchrun.append(f"--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,{PREEMPT_SIGNAL}")
    return torchrun + ["--no-python"]


def _supervisor(job: JobSpec, host: Host, where: NodeLayout, node_rank: int, nnodes: int, master_addr: str,
                options: PlanOptions) -> list[str]:
    """The node supervisor's command line, but for the run's own folder (`_folders`)."""
    supervisor = [
        where.python, "-m", SUPERVISOR_MODULE,
        "--node-dir", where.seen_dir, "--host", host.name, "--node-rank", str(node_rank),
        "--peers", str(nnodes), "--grace", f"{STOP_GRACE_S:g}", "--max-restarts", str(job.max_restarts),
    ]
    if nnodes > 1:
        coordinator = f"[{master_addr}]" if ":" in master_addr else master_addr  # IPv6
        supervisor += ["--coordinator", f"{coordinator}:{supervisors_port(rdzv_port(job, options))}",
                       "--peer-timeout", f"{PEER_TIMEOUT_S:g}"]
    if options.shared_dir:  # a Slurm node: its output goes to the shared folder, the scheduler keeps the time
        supervisor += ["--preempt-signal", PREEMPT_SIGNAL]
        if where.kind is NodeKind.CONTAINER and options.container == "docker":  # not the step's processes: not signalled
            supervisor.append("--forward-preempt")
        return supervisor + ([] if options.detach else ["--lease", f"{LEASE_S:g}"])
    if not options.detach:
        supervisor += ["--lease", f"{LEASE_S:g}", "--echo"]
    elif job.timeout_s is not None:  # no launcher watches the clock of a detached run
        supervisor += ["--timeout", f"{job.timeout_s:g}"]
    return supervisor


def _folders(job: JobSpec, host: Host, where: NodeLayout, options: PlanOptions) -> list[str]:
    """The supervisor's arguments for the run's own folder, the code it copies the working directory
    from, and the run resumed from, as the node sees them."""
    if where.kind is NodeKind.CONTAINER:
        folders = ["--state-dir", CONTAINER_STATE, "--work-dir", CONTAINER_WORKDIR, "--code-from", CONTAINER_CODE]
        return folders + (["--resume-from", CONTAINER_RESUME] if where.resume_dir else [])
    folders = ["--state-dir", where.state_dir, "--code-from", where.copy or str(job.workdir)]
    if host.is_local and options.code_list:
        folders += ["--code-list", options.code_list]
    return folders + (["--resume-from", where.resume_dir] if where.resume_dir else [])
