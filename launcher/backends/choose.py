"""Which backend runs a run's nodes: chosen when the run is submitted, recorded in its run directory
(`handle.json`), and found again from there by every later command on the run."""

from __future__ import annotations

import json

from ..errors import SpecError
from ..plan import LaunchPlan
from ..record import rundir
from ..record.rundir import RunPaths
from .base import Backend


def record(paths: RunPaths, backend: Backend) -> None:
    """Keep in the run directory which backend runs the run."""
    rundir.write_json(paths.handle_file, {"backend": backend.name})


def backend_of(paths: RunPaths, plan: LaunchPlan) -> Backend:
    """The backend that runs the run at `paths` (of a run from before handle.json: one-box when every
    node is this machine, else SSH)."""
    try:
        name = json.loads(paths.handle_file.read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        name = "local" if all(node.is_local for node in plan.nodes) else "ssh"
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "ssh":
        return _ssh(paths, plan)
    if name == "slurm":
        return _slurm(paths)
    raise SpecError(f"{paths.handle_file}: backend: expected local, ssh or slurm, got {name!r}")


def _slurm(paths: RunPaths) -> Backend:
    from ..spec import load_cluster
    from .slurm import SlurmBackend

    cluster = load_cluster(paths.cluster_file)
    if cluster.slurm is None:
        raise SpecError(f"{paths.cluster_file}: has no slurm block, which the run used")
    return SlurmBackend(cluster.slurm, paths)


def _ssh(paths: RunPaths, plan: LaunchPlan) -> Backend:
    from ..spec import load_cluster
    from .ssh import SshBackend  # the SSH library only for lab runs

    cluster = load_cluster(paths.cluster_file)
    hosts = {h.name: h for h in cluster.hosts}
    missing = [n.host for n in plan.nodes if n.host not in hosts]
    if missing:
        raise SpecError(f"{paths.cluster_file}: has no host '{missing[0]}', which the run used")
    return SshBackend(hosts, paths, plan.run_id)
