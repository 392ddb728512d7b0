"""Pure planning: (job, hosts, run id, options) -> what runs on every node, exactly.

Nothing here touches the disk, the network or the clock; `--dry-run` prints a plan and
tests compare plans with golden files.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .node import contract
from .spec import Host, JobSpec, backend_for

SECRET_MASK = "***"
LOCAL_MASTER_ADDR = "127.0.0.1"
DEFAULT_RDZV_PORT = 29500
RANK_WRAPPER_MODULE = "launcher.node.rankexec"
SUPERVISOR_MODULE = "launcher.node.supervisor"
CONTAINER_RUN_DIR = "/launch/run"  # where a node's run directory is mounted in its container
CONTAINER_CHECKPOINTS = "/launch/checkpoints"  # where the run's checkpoint folder is mounted
CONTAINER_WORKDIR = "/workspace"  # where the ranks' working directory is mounted
CONTAINER_STATE = "/launch/state"  # where the run's own folder (checkpoints, working directory) is mounted
CONTAINER_CODE = "/launch/code"  # where the host's copy of the workdir is mounted, read-only
CONTAINER_RESUME = "/launch/resume"  # where the folder of the run resumed from is mounted, read-only
CONTAINER_LIB = "/opt/launch/lib"  # the launcher's in-rank helpers in the job image (Dockerfile)
REMOTE_LIB = "lib"  # runtime: host: what ships with the ranks (`launcher.node`), in the node's run directory
RUNS_FOLDER = "runs"  # in a job's folder on a host: <host>/<run id>/, each run's own folder
RUN_LABEL = "launch.run_id"
WORKDIR_LABEL = "launch.workdir"  # on a container: the workdir copy it mounts, which pruning keeps
# runtime: host on a lab host: a process group of its own (setsid), its id in a file so that the
# launcher can stop it, started in the node's run directory (its supervisor enters the run's working
# directory), with the inventory's python first
# on PATH (as for local runs). $0: pid file, $1: directory, $2: that python's folder (may be empty),
# $3: a file for its output when it runs detached (empty: the SSH channel).
HOST_WRAPPER = (
    'echo $$ > "$0" && cd "$1" && { [ -z "$2" ] || export PATH="$2:$PATH"; } && '
    '{ [ -z "$3" ] || exec >"$3" 2>&1 </dev/null; } && shift 3 && exec "$@"'
)
LEASE_S = 10.0  # an attached run's nodes stop when the launcher has not renewed their lease for this long
PEER_TIMEOUT_S = 10.0  # a node that has not been heard from for this long is lost; the others stop
STOP_GRACE_S = 10.0  # from SIGTERM to SIGKILL when a node stops
DETACHED_OUTPUT = "supervisor.log"  # a detached node's own stdout and stderr (its run's lines are in NODE_OUTPUT)


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
    rdzv_port: int | None = None  # chosen for a run whose job fixes none (a free port, for one-box runs)
    local_lib: str | None = None  # the folder holding the launcher package, for a local host's own `python`


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


def node_nproc(job: JobSpec, host: Host, local_cpus: int) -> int | str:
    """Processes on one node: the job's count, or `auto`: GPUs on GPU hosts, slots on CPU hosts."""
    if job.nproc_per_node != "auto":
        return job.nproc_per_node
    if host.gpus:
        return host.gpus
    if host.slots:
        return host.slots
    return local_cpus if host.is_local else "auto"


def rdzv_port(job: JobSpec, options: PlanOptions) -> int:
    """The job's port, else the one chosen for this run, else the default."""
    return job.rdzv_port or options.rdzv_port or DEFAULT_RDZV_PORT


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


def run_state_dir(root: str, job: str, host: str, run_id: str) -> str:
    """A run's own folder on a host (`launcher.node.workspace`): its checkpoints and working directory.
    Not inside `<job>/<host>/`, the job's checkpoint folder of earlier versions, which emptied it."""
    return f"{root}/{job}/{RUNS_FOLDER}/{host}/{run_id}"


def workdir_copies(remote_jobs: str, user: str, job: str) -> str:
    """Where a host keeps its copies of a job's workdir, each named by its hash (`launcher.sync`)."""
    return f"{remote_jobs}-{user}/{job}/.workdirs"


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
    in_container = not host.is_local and job.runtime == "docker"
    kind = NodeKind.CONTAINER if in_container else NodeKind.LOCAL if host.is_local else NodeKind.HOST_PROCESS
    user = host.ssh.user or options.local_user
    node_dir = options.run_dir if host.is_local else f"{options.remote_runs}-{user}/{run_id}/{host.name}"
    seen_dir = CONTAINER_RUN_DIR if in_container else node_dir  # the run directory as ranks see it
    state_dir = run_state_dir(options.local_jobs if host.is_local else f"{options.remote_jobs}-{user}", job.name, host.name, run_id)
    checkpoint_dir = f"{state_dir}/{contract.STATE_CHECKPOINTS}"
    resume_dir = options.resume_dirs.get(host.name)
    copy = None
    if not host.is_local:
        if not options.workdir_hash:
            raise SpecError(f"{job.path}: a remote node needs the hash of the workdir copied to its host")
        copy = f"{workdir_copies(options.remote_jobs, user, job.name)}/{options.workdir_hash}"
    python = "python3" if in_container else host.python or (options.local_python if host.is_local else options.remote_python)
    log_dir, metrics_dir = contract.node_dirs(seen_dir, host.name)
    torchrun = _torchrun(job, host, python, node_rank, nproc, nnodes, master_addr, run_id, options)
    supervisor = _supervisor(job, host, python, seen_dir, node_rank, nnodes, master_addr, options)
    if in_container:
        cwd, seen_checkpoints = CONTAINER_WORKDIR, CONTAINER_CHECKPOINTS
        supervisor += ["--state-dir", CONTAINER_STATE, "--work-dir", CONTAINER_WORKDIR, "--code-from", CONTAINER_CODE]
        if resume_dir:
            supervisor += ["--resume-from", CONTAINER_RESUME]
    else:
        cwd, seen_checkpoints = f"{state_dir}/{contract.STATE_WORK}", checkpoint_dir
        supervisor += ["--state-dir", state_dir, "--code-from", copy or str(job.workdir)]
        if host.is_local and options.code_list:
            supervisor += ["--code-list", options.code_list]
        if resume_dir:
            supervisor += ["--resume-from", resume_dir]
    rank_argv = supervisor + ["--"] + torchrun + [python, "-m", RANK_WRAPPER_MODULE, *job.command]
    env = _rank_env(job, host, run_id, backend, metrics_dir, log_dir, seen_checkpoints, options)
    if host.gpu_ids and not in_container:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(host.gpu_ids)
    if job.secrets and not host.is_local:
        env[contract.SECRETS_FILE_VAR] = f"{seen_dir}/{contract.SECRETS_FILE}"
    container = f"launch-{run_id}-{host.name}" if in_container else None
    pid_file = None
    if kind is NodeKind.CONTAINER:
        if "PYTHONPATH" in job.env:  # keep the image's own entry for the launcher's helpers
            env["PYTHONPATH"] = f"{CONTAINER_LIB}:{job.env['PYTHONPATH']}"
        assert copy is not None
        mounts = {node_dir: CONTAINER_RUN_DIR, state_dir: CONTAINER_STATE, checkpoint_dir: CONTAINER_CHECKPOINTS,
                  f"{state_dir}/{contract.STATE_WORK}": CONTAINER_WORKDIR, copy: f"{CONTAINER_CODE}:ro"}
        if resume_dir:
            mounts[resume_dir] = f"{CONTAINER_RESUME}:ro"
        argv = _docker_run(host, run_id, container, mounts, env, options) + rank_argv
        lib = CONTAINER_LIB
    elif kind is NodeKind.LOCAL:
        argv = rank_argv
        lib = options.local_lib or ""
        if host.python and host.python != options.local_python and options.local_lib:  # another Python: give it the launcher's helpers
            env["PYTHONPATH"] = ":".join(p for p in (options.local_lib, job.env.get("PYTHONPATH")) if p)
    else:  # runtime: host on a lab host: the launcher's in-rank helpers are copied there
        pid_file = f"{node_dir}/{host.name}.pid"
        lib = f"{node_dir}/{REMOTE_LIB}"
        env["PYTHONPATH"] = ":".join(p for p in (lib, job.env.get("PYTHONPATH")) if p)
        bindir = python.rsplit("/", 1)[0] if python.startswith("/") else ""
        output = f"{log_dir}/{DETACHED_OUTPUT}" if options.detach else ""
        argv = ["setsid", "-f" if options.detach else "--wait", "sh", "-c", HOST_WRAPPER, pid_file, node_dir, bindir, output, "env"]
        argv += [f"{key}={value}" for key, value in sorted(env.items())] + rank_argv
    for name in job.secrets:
        env[name] = SECRET_MASK
    return NodePlan(
        host=host.name,
        kind=kind,
        address=host.address,
        node_rank=node_rank,
        nproc=nproc,
        first_rank=first_rank,
        image=options.image if in_container else None,
        argv=tuple(argv),
        env=env,
        secrets=job.secrets,
        cwd=cwd,
        log_dir=log_dir,
        metrics_dir=metrics_dir,
        node_dir=node_dir,
        checkpoint_dir=checkpoint_dir,
        state_dir=state_dir,
        resume_dir=resume_dir,
        node_env=_node_env(kind, python, lib, env),
        container=container,
        pid_file=pid_file,
        workdir_copy=copy,
    )


def _torchrun(job: JobSpec, host: Host, python: str, node_rank: int, nproc: int | str, nnodes: int, master_addr: str,
              run_id: str, options: PlanOptions) -> list[str]:
    """torchrun's command line on one node: its rank, the rendezvous on the first node, no restarts of its own."""
    torchrun = [
        python, "-m", "torch.distributed.run",
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
    return torchrun + ["--no-python"]


def _supervisor(job: JobSpec, host: Host, python: str, seen_dir: str, node_rank: int, nnodes: int, master_addr: str,
                options: PlanOptions) -> list[str]:
    """The node supervisor's command line, but for the run's own folder (the caller's to add)."""
    supervisor = [
        python, "-m", SUPERVISOR_MODULE,
        "--node-dir", seen_dir, "--host", host.name, "--node-rank", str(node_rank),
        "--peers", str(nnodes), "--grace", f"{STOP_GRACE_S:g}", "--max-restarts", str(job.max_restarts),
    ]
    if nnodes > 1:
        coordinator = f"[{master_addr}]" if ":" in master_addr else master_addr  # IPv6
        supervisor += ["--coordinator", f"{coordinator}:{rdzv_port(job, options) + 1}", "--peer-timeout", f"{PEER_TIMEOUT_S:g}"]
    if not options.detach:
        supervisor += ["--lease", f"{LEASE_S:g}", "--echo"]
    elif job.timeout_s is not None:  # no launcher watches the clock of a detached run
        supervisor += ["--timeout", f"{job.timeout_s:g}"]
    return supervisor


def _rank_env(job: JobSpec, host: Host, run_id: str, backend: str, metrics_dir: str, log_dir: str, checkpoints: str,
              options: PlanOptions) -> dict[str, str]:
    """The job's env, then what the launcher sets for every rank (the contract's variables, the NIC)."""
    env = dict(job.env)
    env.setdefault("PYTHONUNBUFFERED", "1")  # live output, and no lines lost when a rank is stopped
    env.update({
        contract.RUN_ID: run_id,
        contract.METRICS_DIR: metrics_dir,
        contract.LOG_DIR: log_dir,
        contract.HOST: host.name,
        contract.BACKEND: backend,
        contract.CHECKPOINT_DIR: checkpoints,
    })
    nic = host.nic or options.nics.get(host.name)
    if nic:
        env["GLOO_SOCKET_IFNAME"] = nic
        if backend == "nccl":
            env["NCCL_SOCKET_IFNAME"] = nic
    return env


def _node_env(kind: NodeKind, python: str, lib: str, env: dict[str, str]) -> dict[str, str]:
    """What the node's supervisor and rank wrapper add for every rank, described (values that only the
    node knows are written as the shell would expand them)."""
    described = {contract.ATTEMPT: "0 (1, 2, ... after each restart of the group)"}
    startup = f"{lib}/launcher/node/startup" if lib else "<launch's startup folder>"
    behind = env.get("PYTHONPATH") or (CONTAINER_LIB if kind is NodeKind.CONTAINER else "$PYTHONPATH")
    described["PYTHONPATH"] = f"{startup}:{behind}"
    if kind is not NodeKind.CONTAINER and python.startswith("/"):
        described["PATH"] = f"{python.rsplit('/', 1)[0]}:$PATH"
    return described


def _docker_run(host: Host, run_id: str, name: str, mounts: dict[str, str], env: dict[str, str],
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
