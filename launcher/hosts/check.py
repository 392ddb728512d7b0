"""`launch check CLUSTER.yaml`: preflight every host (SSH, docker, GPUs, free ports, clock, disk).

One probe per host, all hosts in parallel; one line per host; usable only when nothing is wrong.
Ports are checked where and as a launch checks them: on the first host, the ports
`launcher.plan.ports.first_host_ports` names, each asked with `ports.holders` after the probe.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field

from ..errors import LaunchError
from ..spec import ClusterSpec, Host, JobSpec
from .parallel import on_every_host
from ..plan.ports import SUPERVISORS_ROLE, first_host_ports, ports_needed
from . import ports as port_probe

MAX_CLOCK_SKEW_S = 2.0
MIN_FREE_DISK_GB = 5.0

# Prints key=value lines; every command may be missing on a host, which the report then says.
PROBE = r"""
v="$(docker version --format '{{.Server.Version}}' 2>/dev/null)"; printf 'docker=%s\n' "${v:-missing}"
printf 'gpus=%s\n' "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
printf 'disk_kb=%s\n' "$(df -Pk /tmp 2>/dev/null | awk 'NR==2 {print $4}')"
printf 'time=%s\n' "$(date +%s.%N)"
"""
# the role of a port that only runs of several nodes need: in use, it is a note, not a problem
MULTI_NODE_ROLE = f"{SUPERVISORS_ROLE}, needed for multi-node runs"

# $0: a python. Run apart from PROBE: importing torch takes seconds, which would skew the clock reading.
TORCH_PROBE = "t=\"$(\"$0\" -c 'import torch; print(torch.__version__)' 2>/dev/null)\"; printf 'torch=%s\\n' \"${t:-missing}\""


@dataclass
class HostCheck:
    host: Host
    facts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skew_s: float | None = None
    ports: dict[int, str] = field(default_factory=dict)  # the ports checked there, each with its role
    held: dict[int, str | None] | None = field(default_factory=dict)  # who holds each (`ports.holders`); None: no ss there
    notes: list[str] = field(default_factory=list)  # what limits the host without making it unusable

    def busy(self, port: int) -> bool | None:
        """Whether something listens on a checked `port`; None when that could not be told."""
        return None if self.held is None or port not in self.held else self.held[port] is not None

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        where = "this machine" if self.host.is_local else self.host.address
        details = []
        if "docker" in self.facts:
            details.append(f"docker {self.facts['docker']}")
        if "torch" in self.facts:
            details.append(f"torch {self.facts['torch']}")
        if "gpus" in self.facts:
            details.append(f"gpus {self.facts['gpus']}/{self.host.gpus}")
        details += self._port_details()
        if self.skew_s is not None:
            details.append(f"clock {self.skew_s:+.2f} s")
        if self.facts.get("disk_kb", "").isdigit():
            details.append(f"/tmp {int(self.facts['disk_kb']) / 1e6:.1f} GB free")
        verdict = "ok" if self.ok else "NOT USABLE: " + "; ".join(self.problems)
        verdict += "".join(f"; note: {note}" for note in self.notes)
        return f"{self.host.name:<12} {where:<16} {verdict}" + (f"  ({', '.join(details)})" if details else "")

    def _port_details(self) -> list[str]:
        """`port 29500 free` for each port checked (none on a host that needs none)."""
        if not self.ports or not self.facts:  # none to check, or the probe never ran
            return []
        if self.held is None:
            return ["ports not checked (no ss there)"]
        states = {True: "in use", False: "free", None: "unknown"}
        return [f"port {port} {states[self.busy(port)]}" + (" (for multi-node runs)" if role == MULTI_NODE_ROLE else "")
                for port, role in self.ports.items()]



def check_host(host: Host, ports: dict[int, str] | None = None, python: str = "", needs_docker: bool = True) -> HostCheck:
    """One host's preflight; `ports` (port -> role) must be free there, except that one whose role is
    MULTI_NODE_ROLE only gets a note; with `python`, also whether that interpreter there has torch."""
    result = HostCheck(host, ports=dict(ports or {}))
    try:
        output, sent, received, result.held = _probe(host, list(result.ports), python)
    except LaunchError as exc:
        result.problems.append(str(exc))
        return result
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result.facts[key.strip()] = value.strip()
    if python and result.facts.get("torch", "missing") == "missing":
        result.problems.append(f"{python} there cannot import torch (runtime: host runs the ranks with it)")
    if needs_docker and result.facts.get("docker", "missing") == "missing" and not host.is_local:
        result.problems.append("docker does not answer (is dockerd running, may this user use it?)")
    gpus = int(result.facts.get("gpus") or 0)
    if gpus < host.gpus:
        result.problems.append(f"{gpus} GPU(s) visible, the inventory says {host.gpus}")
    for port, role in result.ports.items():
        if result.busy(port):
            (result.notes if role == MULTI_NODE_ROLE else result.problems).append(f"port {port} is in use ({role})")
    try:
        result.skew_s = float(result.facts["time"]) - (sent + received) / 2
    except (KeyError, ValueError):
        pass
    if result.skew_s is not None and abs(result.skew_s) > MAX_CLOCK_SKEW_S:
        result.problems.append(f"clock is {result.skew_s:+.1f} s off this machine's")
    disk = result.facts.get("disk_kb", "")
    if disk.isdigit() and int(disk) / 1e6 < MIN_FREE_DISK_GB:
        result.problems.append(f"only {int(disk) / 1e6:.1f} GB free in /tmp")
    return result


def _probe(host: Host, ports: list[int], python: str = "") -> tuple[str, float, float, dict[int, str | None] | None]:
    """PROBE's output (with TORCH_PROBE's, for `python`), when PROBE was sent and answered, and who
    holds each of `ports` there (`ports.holders`, as the launch asks)."""
    argv = ["sh", "-c", PROBE, "probe"]
    if host.is_local:
        if not shutil.which("sh"):
            raise LaunchError("no sh on this machine")
        sent = time.time()
        output = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
        received = time.time()
        if python:
            output += subprocess.run(["sh", "-c", TORCH_PROBE, python], capture_output=True, text=True, timeout=120).stdout
        return output, sent, received, port_probe.holders(ports)  # as the launch asks on this machine
    from .ssh import connect, run  # the SSH library only when a remote host is checked

    conn = connect(host)
    try:
        sent = time.time()
        _, output = run(conn, argv, timeout=60)
        received = time.time()
        if python:
            output += run(conn, ["sh", "-c", TORCH_PROBE, python], timeout=120)[1]
        return output, sent, received, port_probe.holders(ports, port_probe.listeners_over(conn))
    finally:
        conn.close()


def inventory_ports(port: int) -> dict[int, str]:
    """What `launch check CLUSTER.yaml` checks on the inventory's first host (the first host of every
    run from it): the rendezvous port; port + 1 only as needed for multi-node runs."""
    several = ports_needed(port, nodes=2)  # what any run of several nodes needs
    return {number: role if number in ports_needed(port, nodes=1) else MULTI_NODE_ROLE for number, role in several.items()}


def check_cluster(cluster: ClusterSpec, port: int, port_given: bool = True) -> list[HostCheck]:
    """Every host of the inventory; the ports on its first only (a run's other hosts listen on none),
    and not on `address: local` unless `port_given` (one-box runs that fix no port take a free one)."""
    first = cluster.hosts[0].name if cluster.hosts and (port_given or not cluster.hosts[0].is_local) else None
    results, _ = on_every_host(cluster.hosts, lambda h: check_host(h, inventory_ports(port) if h.name == first else {}),
                               lambda h: h.name)
    return [results[h.name] for h in cluster.hosts]


def check_job(job: JobSpec, hosts: tuple[Host, ...], port: int, local_python: str,
              port_fixed: bool = True) -> tuple[list[HostCheck], list[str]]:
    """`launch check JOB.yaml`: every host the job would use, as the job needs it (docker, or a
    python with torch, the same version everywhere; GPUs for its processes; on the first host the
    ports the launch checks (`first_host_ports`: with `port` when it is `port_fixed`, else as the
    launch picks it), and what the job needs here (its base image). Host results, and job problems."""
    remote = any(not h.is_local for h in hosts)
    on_host = job.runtime == "host" or not remote
    first_ports = first_host_ports(job, hosts, port if port_fixed else None)

    def one(host: Host) -> HostCheck:
        python = (host.python or (local_python if host.is_local else "python3")) if on_host else ""
        return check_host(host, first_ports if host.name == hosts[0].name else {}, python=python, needs_docker=not on_host)

    results, _ = on_every_host(hosts, one, lambda h: h.name)
    checks = [results[h.name] for h in hosts]
    for check in checks:
        nproc = job.nproc_per_node
        gpus = int(check.facts.get("gpus") or 0)
        if isinstance(nproc, int) and check.host.gpus and nproc > gpus and gpus:
            check.problems.append(f"nproc_per_node: {nproc} is more than the {gpus} GPU(s) visible there")
    problems = []
    versions = {c.facts["torch"] for c in checks if c.facts.get("torch", "missing") != "missing"}
    if len(versions) > 1:
        problems.append(f"the hosts have different torch versions ({', '.join(sorted(versions))}); ranks of one run need the same")
    if job.runtime == "docker" and remote:
        problems += _base_here(job.image.base)
    return checks, problems


def _base_here(base: str) -> list[str]:
    try:
        import docker
        import docker.errors

        docker.from_env().images.get(base)
        return []
    except docker.errors.ImageNotFound:
        return [f"image.base {base} is not on this machine; docker pull it (or build it) before launching"]
    except Exception as exc:  # noqa: BLE001 - the SDK raises several kinds
        return [f"this machine's Docker engine does not answer, so the image cannot be built ({exc})"]
