"""cluster.yaml, the inventory: its hosts, how to reach them over SSH, what each has (README: "What you
write", "`cluster.yaml`: your machines")."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecError
from .fields import Section
from .yamlfile import load_mapping, shown_path

if TYPE_CHECKING:
    from .slurm import SlurmSpec

LOCAL_ADDRESS = "local"
HOST_KEY_POLICIES = ["strict", "accept-new"]
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
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
    hosts: tuple[Host, ...]  # () for a Slurm inventory: its nodes are the scheduler's to pick
    slurm: SlurmSpec | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "--local"


def load_cluster(path: Path, origin: str | None = None) -> ClusterSpec:
    """Load and check an inventory, its own machines (`hosts`) or a Slurm cluster (`slurm`); raise
    SpecError on the first problem. `origin`: what named it, for an error about a file that is not an
    inventory at all."""
    path = shown_path(path)
    label = str(path)
    top = Section(label, load_mapping(path, label))
    given = [key for key in ("hosts", "slurm") if top.data.get(key) is not None]
    if "command" in top.data and not given:
        named = f" ({origin})" if origin else ""
        raise SpecError(f"{label}: read as the cluster inventory{named}, but it is a job file (it has `command`); "
                        "name an inventory with `hosts` or `slurm`")
    top.check_keys(["ssh", "hosts", "slurm"])
    if len(given) == 2:
        raise SpecError(f"{label}: has both `hosts` and `slurm`; an inventory lists its machines (hosts) or names a "
                        "Slurm cluster that picks them (slurm), not both")
    if not given:
        raise top.fail("hosts", "missing; an inventory needs `hosts` (your machines) or `slurm` (a Slurm cluster)")
    ssh = top.section("ssh")
    ssh.check_keys(_SSH_KEYS)
    defaults = _ssh_settings(ssh, SshSettings())
    if given == ["slurm"]:
        from .slurm import load_slurm

        return ClusterSpec(path=path, hosts=(), slurm=load_slurm(top.section("slurm"), defaults))
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
    return Host(
        name=name,
        address=_address(sec),
        gpus=gpus,
        gpu_ids=gpu_ids,
        slots=sec.integer("slots", None, minimum=1, maximum=MAX_NPROC_PER_NODE),
        nic=_nic(sec),
        python=_python(sec),
        ssh=_ssh_settings(sec, defaults),
    )


def _address(sec: Section, key: str = "address") -> str:
    """'local', a host name, or an IPv4 or IPv6 address (brackets around the latter are dropped)."""
    what = "a host name, an IP address or 'local'"
    value = sec.string(key, what=what)
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if value != bare or not _HOST_NAME.fullmatch(value) or value.startswith("-"):
        raise sec.expected(key, what, value)
    return value


def _nic(sec: Section) -> str | None:
    return sec.string("nic", None, pattern=_NIC, what="a network interface name such as eth0")


def _python(sec: Section) -> str | None:
    """The interpreter for runtime: host; never an option, never a control character."""
    python = sec.string("python", None)
    if python is not None and (python.startswith("-") or re.search(r"[\x00-\x1f\x7f]", python)):
        raise sec.expected("python", "a path to a Python interpreter, or its name on PATH", python)
    return python


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
