"""What the user wrote: job.yaml and cluster.yaml, loaded and checked (DESIGN.md's formats)."""

from __future__ import annotations

import ipaddress
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
_USER = r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?"  # POSIX portable user names (and Samba's trailing $)
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")
_NIC = r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}"  # Linux: at most 15 bytes, no '/', no blanks
_GPU_ID = r"[0-9]{1,4}|(?:GPU|MIG)-[A-Za-z0-9-]{1,80}"  # an index, or a device UUID as nvidia-smi -L shows it
MAX_NPROC_PER_NODE = 1024
MAX_PROCS_PER_CPU = 8  # for a host whose slots the inventory does not give: this many per core of this machine
MAX_GPUS = 256
MAX_RESTARTS = 1000
MAX_TIMEOUT_S = 366 * 24 * 3600.0
MAX_WARMUP_STEPS = 1_000_000
# set by the launcher or torchrun for every rank: a job may not set them in `env`
OWNED_ENV = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
             "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
             "TORCHELASTIC_MAX_RESTARTS", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
DEFAULT_HANG_WARNING_S = 600.0
DEFAULT_WARMUP_STEPS = 3  # compilation, caches and the first all-reduce make the first steps slow


@dataclass(frozen=True)
class SshSettings:
    user: str | None = None  # None: as ~/.ssh/config says, else the local user
    port: int | None = None  # None: as ~/.ssh/config says, else 22
    identity_file: str | None = None  # None: ssh-agent, ~/.ssh/config's IdentityFile, ~/.ssh/id_*
    known_hosts: str | None = None  # None: ~/.ssh/config's UserKnownHostsFile, else ~/.ssh/known_hosts
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
    hostname: str | None = None  # where ~/.ssh/config's HostName says an alias `address` is

    @property
    def is_local(self) -> bool:
        return self.address == LOCAL_ADDRESS

    @property
    def net_address(self) -> str:
        """The address the other hosts reach this one by (rendezvous, NIC lookup)."""
        return self.hostname or self.address


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
    rdzv_port: int | None = None  # None: 29500 on a lab, a free port for a one-box run
    max_restarts: int = 0
    timeout_s: float | None = None
    scaling: tuple[int, ...] = ()
    warmup_steps: int = DEFAULT_WARMUP_STEPS  # steps per rank left out of throughput and step times
    resume: bool = False  # keep the job's checkpoint directory from earlier runs (as --resume does)
    hang_warning_s: float | None = DEFAULT_HANG_WARNING_S  # say so when no rank prints or writes a metric this long


def load_cluster(path: Path, origin: str | None = None) -> ClusterSpec:
    """Load and check an inventory; raise SpecError on the first problem. `origin`: what named it,
    for an error about a file that is not an inventory at all."""
    label = str(path)
    top = Section(label, load_mapping(path, label))
    if "command" in top.data and "hosts" not in top.data:
        named = f" ({origin})" if origin else ""
        raise SpecError(f"{label}: read as the cluster inventory{named}, but it is a job file (it has `command`); "
                        "name an inventory with `hosts`")
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
        user=sec.string("user", base.user, pattern=_USER, what="a user name of letters, digits, '_', '.' or '-'"),
        port=sec.integer("port", base.port, minimum=1, maximum=65535),
        identity_file=sec.string("identity_file", base.identity_file),
        known_hosts=sec.string("known_hosts", base.known_hosts),
        host_key_policy=sec.choice("host_key_policy", HOST_KEY_POLICIES, base.host_key_policy),
    )


def _host(sec: Section, defaults: SshSettings) -> Host:
    sec.check_keys(["name", "address", "gpus", "slots", "nic", "python", *_SSH_KEYS], required=["name", "address"])
    name = sec.string("name", pattern=_NAME, what="a name of letters, digits, '.', '_' or '-'")
    gpus, gpu_ids = _gpus(sec)
    python = sec.string("python", None)
    if python is not None and (python.startswith("-") or re.search(r"[\x00-\x1f\x7f]", python)):
        raise sec.expected("python", "a path to a Python interpreter, or its name on PATH", python)
    return Host(
        name=name,
        address=_address(sec),
        gpus=gpus,
        gpu_ids=gpu_ids,
        slots=sec.integer("slots", None, minimum=1, maximum=MAX_NPROC_PER_NODE),
        nic=sec.string("nic", None, pattern=_NIC, what="a network interface name such as eth0"),
        python=python,
        ssh=_ssh_settings(sec, defaults),
    )


def _address(sec: Section) -> str:
    """'local', a host name, or an IPv4 or IPv6 address (brackets around the latter are dropped)."""
    what = "a host name, an IP address or 'local'"
    value = sec.string("address", what=what)
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if value != bare or not _HOST_NAME.fullmatch(value) or value.startswith("-"):
        raise sec.expected("address", what, value)
    return value


def _gpus(sec: Section) -> tuple[int, tuple[str, ...] | None]:
    value = sec.get("gpus", 0)
    if isinstance(value, list):
        ids = [sec.argv_item(f"gpus[{i}]", item) for i, item in enumerate(value)]
        for i, gpu in enumerate(ids):
            if not re.fullmatch(_GPU_ID, gpu):
                raise sec.expected(f"gpus[{i}]", "a GPU index such as 0, or a device UUID such as GPU-5c1c...", value[i])
        if not ids or len(set(ids)) != len(ids) or len(ids) > MAX_GPUS:
            raise sec.expected("gpus", f"a count or a non-empty list of at most {MAX_GPUS} distinct GPU ids", value)
        return len(ids), tuple(ids)
    return sec.check_int("gpus", value, minimum=0, maximum=MAX_GPUS), None


def local_cluster(cpus: int, gpus: int) -> ClusterSpec:
    """The one-box inventory that --local uses: this machine, no SSH."""
    return ClusterSpec(path=None, hosts=(Host(name="local", address=LOCAL_ADDRESS, gpus=gpus, slots=cpus),))


def load_job(path: Path) -> JobSpec:
    """Load and check a job file on its own; cross-checks with an inventory are in `select_hosts`."""
    label = str(path)
    top = Section(label, load_mapping(path, label))
    top.check_keys(
        ["name", "cluster", "nodes", "nproc_per_node", "backend", "workdir", "command", "env", "secrets",
         "image", "runtime", "rdzv_port", "max_restarts", "timeout", "scaling", "warmup_steps", "resume", "hang_warning"],
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
        if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= MAX_NPROC_PER_NODE:
            raise top.expected("nproc_per_node", f"an integer from 1 to {MAX_NPROC_PER_NODE}, or 'auto'", nproc)
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
        rdzv_port=top.integer("rdzv_port", None, minimum=1, maximum=65534),  # + 1: the node supervisors
        max_restarts=top.integer("max_restarts", 0, minimum=0, maximum=MAX_RESTARTS),
        timeout_s=top.duration("timeout", None, maximum=MAX_TIMEOUT_S),
        scaling=_scaling(top),
        warmup_steps=top.integer("warmup_steps", DEFAULT_WARMUP_STEPS, minimum=0, maximum=MAX_WARMUP_STEPS),
        resume=top.boolean("resume", False),
        hang_warning_s=_hang_warning(top),
    )


def _hang_warning(top: Section) -> float | None:
    """`hang_warning: 10m` (the default), or `false` to never say it."""
    if top.get("hang_warning", None) is False:
        return None
    return top.duration("hang_warning", DEFAULT_HANG_WARNING_S, maximum=MAX_TIMEOUT_S)


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
        check_env_name(key, f"{top.label}: env.{key}")
        out[key] = top.argv_item(f"env.{key}", value)
    return out


def check_env_name(key: str, where: str) -> None:
    """SpecError when a job may not set `key` for its ranks (`where` names the file and key, or the flag)."""
    if not re.fullmatch(_ENV_NAME, key):
        raise SpecError(f"{where}: expected a variable name of letters, digits and '_'")
    if key.startswith(contract.RESERVED_PREFIX):
        raise SpecError(f"{where}: names starting with {contract.RESERVED_PREFIX} are set by the launcher; choose another name")
    if key in OWNED_ENV:
        raise SpecError(f"{where}: is set for every rank by torchrun or the launcher; a job cannot set it"
                        + (" (give the host's nic in the inventory)" if key.endswith("SOCKET_IFNAME") else ""))


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
    counts = tuple(top.check_int(f"scaling[{i}]", n, minimum=1, maximum=MAX_NPROC_PER_NODE) for i, n in enumerate(value))
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
    if isinstance(job.nproc_per_node, int):
        for h in hosts:
            if h.slots is None:
                continue
            implicit = cluster.path is None  # --local: this machine's cores, which a job may oversubscribe
            limit = h.slots * MAX_PROCS_PER_CPU if implicit else h.slots
            if job.nproc_per_node > limit:
                what = f"{MAX_PROCS_PER_CPU} per core of this machine's {h.slots}" if implicit else f"the {h.slots} slot(s) of host '{h.name}' in {cluster.label}"
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


def backend_for(job: JobSpec, hosts: tuple[Host, ...]) -> str:
    """gloo or nccl: `auto` means nccl only when every host has GPUs."""
    if job.backend != "auto":
        return job.backend
    return "nccl" if hosts and all(h.gpus > 0 for h in hosts) else "gloo"
