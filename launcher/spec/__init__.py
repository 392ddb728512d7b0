"""What the user wrote: job.yaml and cluster.yaml, loaded and checked (DESIGN.md's formats)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError
from ..node import contract
from .fields import Section
from .yamlfile import load_mapping

LOCAL_ADDRESS = "local"
HOST_KEY_POLICIES = ["strict", "accept-new"]
BACKENDS = ["auto", "gloo", "nccl"]
RUNTIMES = ["docker", "host"]
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SSH_KEYS = ["user", "port", "identity_file", "known_hosts", "host_key_policy"]
DEFAULT_WARMUP_STEPS = 3  # compilation, caches and the first all-reduce make the first steps slow


@dataclass(frozen=True)
class SshSettings:
    user: str | None = None
    port: int = 22
    identity_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    host_key_policy: str = "strict"


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    gpus: int = 0
    gpu_ids: tuple[str, ...] | None = None  # when the inventory names the devices
    slots: int | None = None
    nic: str | None = None
    python: str | None = None  # interpreter for runtime: host and local runs
    ssh: SshSettings = field(default_factory=SshSettings)

    @property
    def is_local(self) -> bool:
        return self.address == LOCAL_ADDRESS


@dataclass(frozen=True)
class ClusterSpec:
    path: Path | None  # None for the implicit one-box inventory of --local
    hosts: tuple[Host, ...]

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "--local"


@dataclass(frozen=True)
class ImageSpec:
    base: str = "python:3.11-slim"
    requirements: Path | None = None


@dataclass(frozen=True)
class JobSpec:
    path: Path
    name: str
    cluster: Path | None  # None: not named in the file
    command: tuple[str, ...]
    workdir: Path
    nodes: int | None = None
    nproc_per_node: int | str = "auto"
    backend: str = "auto"
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    image: ImageSpec = field(default_factory=ImageSpec)
    runtime: str = "docker"
    rdzv_port: int = 29500
    max_restarts: int = 0
    timeout_s: float | None = None
    scaling: tuple[int, ...] = ()
    warmup_steps: int = DEFAULT_WARMUP_STEPS  # steps per rank left out of throughput and step times
    resume: bool = False  # keep the job's checkpoint directory from earlier runs (as --resume does)


def load_cluster(path: Path) -> ClusterSpec:
    """Load and check an inventory; raise SpecError on the first problem."""
    label = str(path)
    top = Section(label, load_mapping(path, label))
    top.check_keys(["ssh", "hosts"], required=["hosts"])
    ssh = top.section("ssh")
    ssh.check_keys(_SSH_KEYS)
    defaults = _ssh_settings(ssh, SshSettings())
    raw_hosts = top.get("hosts")
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise top.expected("hosts", "a non-empty list of hosts", raw_hosts)
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_hosts):
        if not isinstance(raw, dict):
            raise top.expected(f"hosts[{i}]", "a mapping with name and address", raw)
        host = _host(Section(label, raw, prefix=f"hosts[{i}]."), defaults)
        if host.name in seen:
            raise SpecError(f"{label}: hosts[{i}].name: '{host.name}' is already the name of hosts[{seen[host.name]}]; host names must be unique")
        seen[host.name] = i
        hosts.append(host)
    return ClusterSpec(path=path, hosts=tuple(hosts))


def _ssh_settings(sec: Section, base: SshSettings) -> SshSettings:
    return SshSettings(
        user=sec.string("user", base.user),
        port=sec.integer("port", base.port, minimum=1, maximum=65535),
        identity_file=sec.string("identity_file", base.identity_file),
        known_hosts=sec.string("known_hosts", base.known_hosts),
        host_key_policy=sec.choice("host_key_policy", HOST_KEY_POLICIES, base.host_key_policy),
    )


def _host(sec: Section, defaults: SshSettings) -> Host:
    sec.check_keys(["name", "address", "gpus", "slots", "nic", "python", *_SSH_KEYS], required=["name", "address"])
    name = sec.string("name", pattern=_NAME, what="a name of letters, digits, '.', '_' or '-'")
    address = sec.string("address", pattern=r"\S+", what="a host name, an IP address or 'local'")
    gpus, gpu_ids = _gpus(sec)
    return Host(
        name=name,
        address=address,
        gpus=gpus,
        gpu_ids=gpu_ids,
        slots=sec.integer("slots", None, minimum=1),
        nic=sec.string("nic", None, pattern=r"[^\s/]+", what="a network interface name such as eth0"),
        python=sec.string("python", None),
        ssh=_ssh_settings(sec, defaults),
    )


def _gpus(sec: Section) -> tuple[int, tuple[str, ...] | None]:
    value = sec.get("gpus", 0)
    if isinstance(value, list):
        ids = [sec.argv_item(f"gpus[{i}]", item) for i, item in enumerate(value)]
        if not ids or len(set(ids)) != len(ids):
            raise sec.expected("gpus", "a count or a non-empty list of distinct GPU ids", value)
        return len(ids), tuple(ids)
    return sec.check_int("gpus", value, minimum=0), None


def local_cluster(cpus: int, gpus: int) -> ClusterSpec:
    """The one-box inventory that --local uses: this machine, no SSH."""
    return ClusterSpec(path=None, hosts=(Host(name="local", address=LOCAL_ADDRESS, gpus=gpus, slots=cpus),))


def load_job(path: Path) -> JobSpec:
    """Load and check a job file on its own; cross-checks with an inventory are in `select_hosts`."""
    label = str(path)
    top = Section(label, load_mapping(path, label))
    top.check_keys(
        ["name", "cluster", "nodes", "nproc_per_node", "backend", "workdir", "command", "env", "secrets",
         "image", "runtime", "rdzv_port", "max_restarts", "timeout", "scaling", "warmup_steps", "resume"],
        required=["command"],
    )
    folder = path.parent
    name = top.string("name", _default_name(folder), pattern=_NAME, what="a name of letters, digits, '.', '_' or '-'")
    command = top.string_list("command")
    if not command:
        raise top.expected("command", "a non-empty list, e.g. [python, train.py]", [])
    workdir = folder / top.string("workdir", ".")
    if not workdir.is_dir():
        raise top.fail("workdir", f"'{top.get('workdir', '.')}' is not a directory (resolved to {workdir})")
    workdir = workdir.resolve()
    home = Path.home().resolve()
    if workdir == home or workdir in home.parents:
        what = "the root folder" if workdir == Path("/") else "your home folder" if workdir == home else f"a folder above {home}"
        raise top.fail("workdir", f"'{top.get('workdir', '.')}' is {what}; the workdir is copied to every host, so give it the job's own folder")
    nproc = top.get("nproc_per_node", "auto")
    if nproc != "auto":
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise top.expected("nproc_per_node", "a positive integer or 'auto'", nproc)
    return JobSpec(
        path=path,
        name=name,
        cluster=folder / cluster if (cluster := top.string("cluster", None)) else None,
        command=tuple(command),
        workdir=workdir,
        nodes=top.integer("nodes", None, minimum=1),
        nproc_per_node=nproc,
        backend=top.choice("backend", BACKENDS, "auto"),
        env=_env(top),
        secrets=_secrets(top),
        image=_image(top.section("image"), folder),
        runtime=top.choice("runtime", RUNTIMES, "docker"),
        rdzv_port=top.integer("rdzv_port", 29500, minimum=1, maximum=65534),  # + 1: the node supervisors
        max_restarts=top.integer("max_restarts", 0, minimum=0),
        timeout_s=top.duration("timeout", None),
        scaling=_scaling(top),
        warmup_steps=top.integer("warmup_steps", DEFAULT_WARMUP_STEPS, minimum=0),
        resume=top.boolean("resume", False),
    )


def _default_name(folder: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", folder.resolve().name).lstrip("._-")
    return name or "job"


def _env(top: Section) -> dict[str, str]:
    env = top.get("env", {})
    if not isinstance(env, dict):
        raise top.expected("env", "a mapping of variable names to strings", env)
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not re.fullmatch(_ENV_NAME, key):
            raise top.expected("env", "variable names of letters, digits and '_'", key)
        if key.startswith(contract.RESERVED_PREFIX):
            raise top.fail(f"env.{key}", f"names starting with {contract.RESERVED_PREFIX} are set by the launcher; choose another name")
        out[key] = top.argv_item(f"env.{key}", value)
    return out


def _secrets(top: Section) -> tuple[str, ...]:
    names = top.string_list("secrets", [])
    for i, name in enumerate(names):
        if not re.fullmatch(_ENV_NAME, name):
            raise top.expected(f"secrets[{i}]", "an environment variable name", name)
    clash = sorted(set(names) & set(top.get("env", {}) or {}))
    if clash:
        raise top.fail("secrets", f"'{clash[0]}' is also set in env; a secret's value comes only from the launcher's environment")
    return tuple(names)


def _image(sec: Section, folder: Path) -> ImageSpec:
    sec.check_keys(["base", "requirements"])
    requirements = sec.string("requirements", None)
    req_path = folder / requirements if requirements else None
    if req_path is not None and not req_path.is_file():
        raise sec.fail("requirements", f"'{requirements}' is not a file (resolved to {req_path})")
    return ImageSpec(base=sec.string("base", ImageSpec.base), requirements=req_path)


def _scaling(top: Section) -> tuple[int, ...]:
    value = top.get("scaling", [])
    if not isinstance(value, list):
        raise top.expected("scaling", "a list of node counts, e.g. [1, 2, 4]", value)
    counts = tuple(top.check_int(f"scaling[{i}]", n, minimum=1) for i, n in enumerate(value))
    if len(set(counts)) != len(counts):
        raise top.expected("scaling", "distinct node counts", value)
    return counts


def select_hosts(job: JobSpec, cluster: ClusterSpec, nodes: int | None = None, nodes_label: str | None = None) -> tuple[Host, ...]:
    """The hosts a run uses: the first `nodes` of the inventory, checked against the job."""
    count = nodes if nodes is not None else job.nodes
    where = nodes_label or f"{job.path}: nodes"
    if count is not None and count < 1:
        raise SpecError(f"{where}: expected a positive integer, got {count}")
    available = len(cluster.hosts)
    if count is not None and count > available:
        plural = "host" if available == 1 else "hosts"
        raise SpecError(f"{where}: {count} is more than the {available} {plural} in {cluster.label}")
    hosts = cluster.hosts[: count or available]
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


def backend_for(job: JobSpec, hosts: tuple[Host, ...]) -> str:
    """gloo or nccl: `auto` means nccl only when every host has GPUs."""
    if job.backend != "auto":
        return job.backend
    return "nccl" if hosts and all(h.gpus > 0 for h in hosts) else "gloo"
