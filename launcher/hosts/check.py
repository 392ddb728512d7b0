"""`launch check CLUSTER.yaml`: preflight every host (SSH, docker, GPUs, free port, clock, disk).

One probe per host, all hosts in parallel; one line per host; usable only when nothing is wrong.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field

from ..errors import LaunchError
from ..spec import ClusterSpec, Host
from .parallel import on_every_host

MAX_CLOCK_SKEW_S = 2.0
MIN_FREE_DISK_GB = 5.0

# Prints key=value lines; every command may be missing on a host, which the report then says.
PROBE = r"""
v="$(docker version --format '{{.Server.Version}}' 2>/dev/null)"; printf 'docker=%s\n' "${v:-missing}"
printf 'gpus=%s\n' "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
printf 'disk_kb=%s\n' "$(df -Pk /tmp 2>/dev/null | awk 'NR==2 {print $4}')"
printf 'port_busy=%s\n' "$(ss -ltnH "sport = :$0" 2>/dev/null | grep -c . || true)"
printf 'supervisor_port_busy=%s\n' "$(ss -ltnH "sport = :$(($0 + 1))" 2>/dev/null | grep -c . || true)"
printf 'time=%s\n' "$(date +%s.%N)"
"""


@dataclass
class HostCheck:
    host: Host
    facts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skew_s: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        where = "this machine" if self.host.is_local else self.host.address
        details = []
        if "docker" in self.facts:
            details.append(f"docker {self.facts['docker']}")
        if "gpus" in self.facts:
            details.append(f"gpus {self.facts['gpus']}/{self.host.gpus}")
        if "port_busy" in self.facts:
            details.append(f"port {self.facts['port']} {'in use' if self.facts['port_busy'] != '0' else 'free'}")
        if self.skew_s is not None:
            details.append(f"clock {self.skew_s:+.2f} s")
        if self.facts.get("disk_kb", "").isdigit():
            details.append(f"/tmp {int(self.facts['disk_kb']) / 1e6:.1f} GB free")
        verdict = "ok" if self.ok else "NOT USABLE: " + "; ".join(self.problems)
        return f"{self.host.name:<12} {where:<16} {verdict}" + (f"  ({', '.join(details)})" if details else "")


def check_host(host: Host, port: int) -> HostCheck:
    result = HostCheck(host)
    try:
        sent = time.time()
        output = _probe(host, port)
        received = time.time()
    except LaunchError as exc:
        result.problems.append(str(exc))
        return result
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result.facts[key.strip()] = value.strip()
    result.facts["port"] = str(port)
    if result.facts.get("docker", "missing") == "missing" and not host.is_local:
        result.problems.append("docker does not answer (is dockerd running, may this user use it?)")
    gpus = int(result.facts.get("gpus") or 0)
    if gpus < host.gpus:
        result.problems.append(f"{gpus} GPU(s) visible, the inventory says {host.gpus}")
    if result.facts.get("port_busy", "0") not in ("0", ""):
        result.problems.append(f"port {port} is in use")
    if result.facts.get("supervisor_port_busy", "0") not in ("0", ""):
        result.problems.append(f"port {port + 1} (the node supervisors', rendezvous port + 1) is in use")
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


def _probe(host: Host, port: int) -> str:
    if host.is_local:
        if not shutil.which("sh"):
            raise LaunchError("no sh on this machine")
        done = subprocess.run(["sh", "-c", PROBE, str(port)], capture_output=True, text=True, timeout=60)
        return done.stdout
    from .ssh import connect, run  # the SSH library only when a remote host is checked

    conn = connect(host)
    try:
        _, output = run(conn, ["sh", "-c", PROBE, str(port)], timeout=60)
        return output
    finally:
        conn.close()


def check_cluster(cluster: ClusterSpec, port: int) -> list[HostCheck]:
    results, _ = on_every_host(cluster.hosts, lambda h: check_host(h, port), lambda h: h.name)
    return [results[h.name] for h in cluster.hosts]
