"""Ports on a host, probed: whether those a run needs on its first host (`launcher.plan.ports`: the
rendezvous port, and for runs of several nodes the node supervisors' next to it) are free, or one
clear error naming the process that holds one. The launch and `launch check` both ask `holders`, so
they always agree. A one-box run whose job fixes no port gets a free pair."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from typing import Callable, Iterable

from ..errors import RunError
from ..plan.ports import RENDEZVOUS_ROLE, SUPERVISORS_ROLE, first_host_ports, ports_needed

__all__ = ["RENDEZVOUS_ROLE", "SUPERVISORS_ROLE", "check_free", "check_ports_free", "first_host_ports", "free_port_pair",
           "holder", "holders", "listeners_over", "ports_needed"]

NO_SS = "no-ss"  # what _LISTENERS prints on a host without ss, which then cannot tell who listens
# $0: a port. Prints `ss`'s listeners on it, or NO_SS when the host has no ss.
_LISTENERS = f'command -v ss >/dev/null 2>&1 || {{ echo {NO_SS}; exit 0; }}; ss -ltnpH "sport = :$0"'


def free_port_pair() -> int:
    """A port that is free here, with the others a run of several nodes needs (`ports_needed`) free too."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("", 0))
            port = first.getsockname()[1]
            if all(_bindable(other) for other in ports_needed(port, nodes=2) if other != port):
                return port
    raise RunError("cannot find two free neighbouring ports on this machine for the rendezvous")


def _bindable(port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def holder(listeners: str) -> str | None:
    """Who listens, from `ss -ltnp` lines: `pid 12 (python3)`, or a plain `a process` when ss may not
    say (another user's); None when nobody does."""
    lines = [line for line in listeners.splitlines() if line.strip() and line.strip() != NO_SS]
    if not lines:
        return None
    found = re.search(r'users:\(\("([^"]+)",pid=(\d+)', lines[0])
    return f"pid {found.group(2)} ({found.group(1)})" if found else "a process (ss does not say which: another user's)"


def _here(port: int) -> str:
    if shutil.which("ss"):
        return subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=30).stdout
    with socket.socket() as probe:  # no ss: a bind tells whether the port is taken, not by whom
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return "LISTEN taken"
    return ""


def holders(ports: Iterable[int], listeners: Callable[[int], str] | None = None) -> dict[int, str | None] | None:
    """Who holds each of `ports` on a host, as `listeners` (`ss` there; default: this machine) finds:
    as `holder` says, None for a free port; None for them all when the host cannot tell (no ss there)."""
    found: dict[int, str | None] = {}
    for port in ports:
        answer = (listeners or _here)(port)
        if answer.strip() == NO_SS:
            return None
        found[port] = holder(answer)
    return found


def check_ports_free(where: str, ports: dict[int, str], listeners: Callable[[int], str] | None = None) -> None:
    """RunError naming the holder when one of `ports` (port -> role, as `first_host_ports` gives them)
    is taken on `where`, a run's first host."""
    for number, taken in (holders(ports, listeners) or {}).items():
        if taken:
            raise RunError(f"port {number} on {where} ({ports[number]}) is in use by {taken}; stop it, or set rdzv_port "
                           "in the job to a free port (launch check shows which are free)")


def check_free(where: str, port: int, nodes: int, listeners: Callable[[int], str] | None = None) -> None:
    """`check_ports_free` for what a run of `nodes` nodes with rendezvous port `port` needs (`ports_needed`)."""
    check_ports_free(where, ports_needed(port, nodes), listeners)


def listeners_over(conn) -> Callable[[int], str]:
    """`ss` on a lab host, over its SSH connection."""
    from .ssh import run

    def ask(port: int) -> str:
        _, out = run(conn, ["sh", "-c", _LISTENERS, str(port)], timeout=30)
        return out

    return ask
