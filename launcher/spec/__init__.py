"""What the user wrote: job.yaml and cluster.yaml, loaded and checked (DESIGN.md's formats)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError
from ..node import contract
from .fields import Section
from .yamlfile import load_mapping, shown_path

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
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
# an index, or a device UUID as nvidia-smi -L shows it (a MIG device's, also in the older GPU/instance form)
_GPU_ID = rf"[0-9]{{1,4}}|GPU-{_UUID}|MIG-{_UUID}|MIG-GPU-{_UUID}/[0-9]{{1,3}}/[0-9]{{1,3}}"
_UUID_WHAT = "(GPU-<8-4-4-4-12 hex digits>, MIG-...)"
_GPU_ID_WHAT = f"a GPU index such as 0, or a device UUID as nvidia-smi -L shows it {_UUID_WHAT}"
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
DEFAULT_OUTPUTS = ("*",)  # every file the ranks wrote in their working directory
DEFAULT_OUTPUTS_LIMIT = 1000 ** 3  # bytes of outputs brought back per host: 1 GB
MAX_OUTPUTS_LIMIT = 1000 ** 4


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
    resume: bool = False  # start from the newest earlier run's checkpoints and outputs (as --resume does)
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS  # what the ranks write in their working directory that comes back
    outputs_limit: int = DEFAULT_OUTPUTS_LIMIT  # bytes per host brought back; the rest stays on the host
    hang_warning_s: float | None = DEFAULT_HANG_WARNING_S  # say so when no rank prints or writes a metric this long


def load_cluster(path: Path, origin: str | None = None) -> ClusterSpec:
    """Load and check an inventory; raise SpecError on the first problem. `origin`: what named it,
    for an error about a file that is not an inventory at all."""
    path = shown_path(path)
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
    """A count (`gpus: 4`), or the devices named: a list of ids, or one id on its own (`gpus: GPU-<uuid>`)."""
    value = sec.get("gpus", 0)
    if isinstance(value, str):
        if value.isdigit() and re.fullmatch(_GPU_ID, value):  # a quoted count, or one device index: not ours to guess
            raise sec.fail("gpus", f"'{value}' is ambiguous: write gpus: {value} for {value} GPU(s), or gpus: [{value}] "
                           f"for the device of index {value}")
        if not re.fullmatch(_GPU_ID, value):
            raise sec.expected("gpus", f"a GPU count from 0 to {MAX_GPUS}, a GPU index or a device UUID {_UUID_WHAT}", value)
        value = [value]
    if isinstance(value, list):
        ids = [sec.argv_item(f"gpus[{i}]", item) for i, item in enumerate(value)]
        for i, gpu in enumerate(ids):
            if not re.fullmatch(_GPU_ID, gpu):
                raise sec.expected(f"gpus[{i}]", _GPU_ID_WHAT, value[i])
        if not ids or len(set(ids)) != len(ids) or len(ids) > MAX_GPUS:
            raise sec.expected("gpus", f"a count or a non-empty list of at most {MAX_GPUS} distinct GPU ids", value)
        return len(ids), tuple(ids)
    return sec.check_int("gpus", value, minimum=0, maximum=MAX_GPUS), None


def local_cluster(cpus: int, gpus: int) -> ClusterSpec:
    """The one-box inventory that --local uses: this machine, no SSH."""
    return ClusterSpec(path=None, hosts=(Host(name="local", address=LOCAL_ADDRESS, gpus=gpus, slots=cpus),))


def load_job(path: Path) -> JobSpec:
    """Load and check a job file on its own; cross-checks with an inventory are in `select_hosts`."""
    path = shown_path(path)
    label = str(path)
    top = Section(label, load_mapping(path, label))
    top.check_keys(
        ["name", "cluster", "nodes", "nproc_per_node", "backend", "workdir", "command", "env", "secrets",
         "image", "runtime", "rdzv_port", "max_restarts", "timeout", "scaling", "warmup_steps", "resume", "hang_warning",
         "outputs", "outputs_limit"],
        required=["command"],
    )
    folder = path.parent
    name = top.string("name", _default_name(folder), pattern=_NAME, what="a name of letters, digits, '.', '_' or '-'")
    command = top.string_list("command")
    if not command:
        raise top.expected("command", "a non-empty list, e.g. [python, train.py]", [])
    workdir = folder / top.string("workdir", ".")
    if not workdir.is_dir():
        raise top.fail("workdir", f"'{top.get('workdir', '.')}' is not a directory (resolved to {shown_path(workdir)})")
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
        outputs=_outputs(top),
        outputs_limit=_size(top, "outputs_limit", DEFAULT_OUTPUTS_LIMIT),
        hang_warning_s=_hang_warning(top),
    )


def _outputs(top: Section) -> tuple[str, ...]:
    """Glob patterns relative to the ranks' working directory (`*` crosses folders)."""
    patterns = top.string_list("outputs", list(DEFAULT_OUTPUTS))
    for i, pattern in enumerate(patterns):
        if not pattern or pattern.startswith("/") or ".." in pattern.split("/"):
            raise top.expected(f"outputs[{i}]", "a glob relative to the working directory, such as '*.pt' or 'out/*'", pattern)
    return tuple(patterns)


def _size(top: Section, name: str, default: int) -> int:
    """A size in bytes: an integer, or a number with a unit: kB, MB, GB, TB (powers of 1000) or KiB,
    MiB, GiB, TiB (powers of 1024)."""
    value = top.get(name, default)
    match = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,6})?)\s*(?:([KMGT])(i?)B?|B)?\s*", str(value), re.IGNORECASE) if not isinstance(value, bool) else None
    if not match:
        raise top.expected(name, "a size such as 500MB or 2GB", value)
    power = " KMGT".index(match.group(2).upper()) if match.group(2) else 0
    size = int(float(match.group(1)) * (1024 if match.group(3) else 1000) ** power)
    if size > MAX_OUTPUTS_LIMIT:
        raise top.expected(name, "a size of at most 1TB", value)
    return size


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
        raise sec.fail("requirements", f"'{requirements}' is not a file (resolved to {shown_path(req_path)})")
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
