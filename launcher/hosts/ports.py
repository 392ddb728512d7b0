"""The rendezvous port, checked before anything starts: free on rank 0's host (and the next one, the
node supervisors', for runs of several nodes), or one clear error naming the process that holds it.
A one-box run whose job fixes no port gets a free one."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from typing import Callable

from ..errors import RunError

# $0: a port. Prints `ss`'s listeners on it, or "no-ss" when the host has no ss.
_LISTENERS = 'command -v ss >/dev/null 2>&1 || { echo no-ss; exit 0; }; ss -ltnpH "sport = :$0"'


def free_port_pair() -> int:
    """A port that is free here, with the next one free too."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("", port + 1))
                except OSError:
                    continue
            return port
    raise RunError("cannot find two free neighbouring ports on this machine for the rendezvous")


def holder(listeners: str) -> str | None:
    """Who listens, from `ss -ltnp` lines: `pid 12 (python3)`, or a plain `a process` when ss may not
    say (another user's); None when nobody does."""
    lines = [line for line in listeners.splitlines() if line.strip() and line.strip() != "no-ss"]
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


RENDEZVOUS_ROLE = "the rendezvous port"
SUPERVISORS_ROLE = "the node supervisors' port, rendezvous + 1"


def ports_needed(port: int, nodes: int) -> dict[int, str]:
    """The ports a run of `nodes` nodes with rendezvous port `port` needs free on its first host (rank
    0's), each with its role: torchrun's rendezvous; with several nodes, also the node supervisors'
    coordinator at port + 1 (plan.py). Every other host needs neither: what runs there connects out."""
    needed = {port: RENDEZVOUS_ROLE}
    if nodes > 1:
        needed[port + 1] = SUPERVISORS_ROLE
    return needed


def check_free(where: str, port: int, nodes: int, listeners: Callable[[int], str] = _here) -> None:
    """RunError naming the holder when a port that a run of `nodes` nodes needs (`ports_needed`) is
    taken on `where`, its first host."""
    for number, role in ports_needed(port, nodes).items():
        taken = holder(listeners(number))
        if taken:
            raise RunError(f"port {number} on {where} ({role}) is in use by {taken}; stop it, or set rdzv_port in the job "
                           "to a free port (launch check shows which are free)")


def listeners_over(conn) -> Callable[[int], str]:
    """`ss` on a lab host, over its SSH connection."""
    from .ssh import run

    def ask(port: int) -> str:
        _, out = run(conn, ["sh", "-c", _LISTENERS, str(port)], timeout=30)
        return out

    return ask
