"""Which ports a run listens on, and so which must be free on its first host (rank 0's) before it
starts: the one rule the plan, the launch's check and `launch check` all follow (README: "`job.yaml`",
`rdzv_port`; "The command line", `launch check`; "Long runs", fail-fast on the nodes).

torchrun's rendezvous listens on the rendezvous port; with several nodes, the node supervisors'
coordinator listens on the port after it. Every other host listens on neither: what runs there
connects out. Pure: which of these ports is free is `launcher.hosts.ports`'s to find out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..spec import Host, JobSpec
    from .model import PlanOptions

DEFAULT_RDZV_PORT = 29500
NODE_RDZV_PORT = "{launch.rdzv_port}"  # a port only the nodes know when they start (Slurm: derived from the job id)
NODE_SUPERVISORS_PORT = "{launch.supervisors_port}"  # the port after it
RENDEZVOUS_ROLE = "the rendezvous port"
SUPERVISORS_ROLE = "the node supervisors' port, rendezvous + 1"


def rdzv_port(job: JobSpec, options: PlanOptions) -> int | str:
    """The job's port, else the one chosen for this run (NODE_RDZV_PORT: the nodes choose), else the default."""
    return job.rdzv_port or options.rdzv_port or DEFAULT_RDZV_PORT


def supervisors_port(port: int | str) -> int | str:
    """Where the node supervisors' coordinator listens on the first host of a run whose rendezvous
    port is `port` (runs of several nodes only)."""
    return NODE_SUPERVISORS_PORT if port == NODE_RDZV_PORT else int(port) + 1


def ports_needed(port: int, nodes: int) -> dict[int, str]:
    """The ports a run of `nodes` nodes with rendezvous port `port` listens on, on its first host,
    each with its role: the rendezvous; with several nodes, also the supervisors' coordinator."""
    needed = {port: RENDEZVOUS_ROLE}
    if nodes > 1:
        needed[supervisors_port(port)] = SUPERVISORS_ROLE
    return needed


def first_host_ports(job: JobSpec, hosts: tuple[Host, ...], port: int | None = None) -> dict[int, str]:
    """The ports a run of `job` on `hosts` needs free on the first host before anything starts
    (`ports_needed`), with `port` (one given for it, as `launch check --port`), else the job's
    `rdzv_port`, else the default as rendezvous port; none for a one-box run that fixes no port: it
    takes a pair that was free a moment ago (`launcher.hosts.ports.free_port_pair`)."""
    fixed = port or job.rdzv_port
    if not fixed and all(h.is_local for h in hosts):
        return {}
    return ports_needed(fixed or DEFAULT_RDZV_PORT, len(hosts))
