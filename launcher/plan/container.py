"""A node in a lab host's container (runtime: docker): its name, labels and mounts, and the `docker run`
that starts it (README: "Multi-host runs", step 5)."""

from __future__ import annotations

from ..node import contract
from ..spec import Host
from .layout import (CONTAINER_CHECKPOINTS, CONTAINER_CODE, CONTAINER_RESUME, CONTAINER_RUN_DIR, CONTAINER_STATE,
                     CONTAINER_WORKDIR, NodeLayout)
from .model import PlanOptions

CONTAINER_LIB = "/opt/launch/lib"  # the launcher's in-rank helpers in the job image (Dockerfile)
RUN_LABEL = "launch.run_id"
WORKDIR_LABEL = "launch.workdir"  # on a container: the workdir copy it mounts, which pruning keeps


def container_name(run_id: str, host: Host) -> str:
    return f"launch-{run_id}-{host.name}"


def mounts(where: NodeLayout) -> dict[str, str]:
    """Host folder -> where the container sees it: the node's run directory, the run's own folder
    (its checkpoints, the ranks' working directory), the workdir copy and the resumed run's folder
    (both read-only)."""
    assert where.copy is not None
    found = {where.node_dir: CONTAINER_RUN_DIR, where.state_dir: CONTAINER_STATE, where.checkpoint_dir: CONTAINER_CHECKPOINTS,
             f"{where.state_dir}/{contract.STATE_WORK}": CONTAINER_WORKDIR, where.copy: f"{CONTAINER_CODE}:ro"}
    if where.resume_dir:
        found[where.resume_dir] = f"{CONTAINER_RESUME}:ro"
    return found


def docker_run(host: Host, run_id: str, name: str, mounts: dict[str, str], env: dict[str, str],
               options: PlanOptions) -> list[str]:
    """`docker run` of one node's container: host networking and IPC, the node's run dir, the run's own
    folder (checkpoints, working directory) and the host's copy of the workdir (read-only) mounted.

    Environment values go on this command line, so secrets never do: rankexec reads them from a
    file in the node's run directory (`LAUNCH_SECRETS_FILE`) and hands them only to the rank.
    """
    argv = [
        "docker", "run", *(["--detach"] if options.detach else []), "--rm", "--name", name,
        "--label", f"{RUN_LABEL}={run_id}", "--label", f"launch.host={host.name}",
        "--label", f"{WORKDIR_LABEL}={options.workdir_hash}",
        "--network", "host", "--ipc", "host",
    ]
    for source, target in mounts.items():
        argv += ["--volume", f"{source}:{target}"]
    argv += ["--workdir", CONTAINER_WORKDIR]
    if host.gpus:
        # docker parses --gpus as CSV: a device list needs its own quotes
        argv += ["--gpus", f'"device={",".join(host.gpu_ids)}"' if host.gpu_ids else "all"]
    for key, value in sorted(env.items()):
        argv += ["--env", f"{key}={value}"]
    assert options.image is not None
    return argv + [options.image]
