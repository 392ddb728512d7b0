"""How a node's part of a run is started, watched and stopped.

A `Transport` starts one node's planned command and hands back a `NodeProcess`; the executor
does not know whether that node is this machine (subprocess, here) or a lab host (SSH, remote.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import IO, Iterator, Protocol

from ..errors import RunError
from ..plan import NodePlan


class NodeProcess(Protocol):
    def lines(self) -> Iterator[bytes]:
        """The node's merged output, line by line, until it ends."""

    def poll(self) -> int | None:
        """The exit code once the node's part has ended, else None."""

    def stop(self, grace_s: float) -> None:
        """End every process of the node's part: ask, then force after `grace_s` seconds."""


class Transport(Protocol):
    def start(self, node: NodePlan, secrets: dict[str, str]) -> NodeProcess:
        """Start `node.argv` with `node.env`, secret values taken from `secrets`, never from the plan."""

    def collect(self, node: NodePlan) -> None:
        """Bring the node's logs and metrics into the run directory."""

    def close(self) -> None:
        """Let go of connections; the run is over."""


def node_environment(node: NodePlan, secrets: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(node.env)
    env.update({name: secrets[name] for name in node.secrets})
    return env


class LocalProcess:
    """torchrun on this machine, in a session of its own so that only the launcher gets Ctrl-C."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen

    def lines(self) -> Iterator[bytes]:
        stream: IO[bytes] | None = self.popen.stdout
        assert stream is not None
        yield from iter(stream.readline, b"")

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace_s: float) -> None:
        # torchrun passes SIGTERM on to every worker's process group (rankexec and the command),
        # and rankexec dies with its parent, so a forced kill of torchrun still ends the ranks.
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.popen.poll() is None:
            self._signal(signal.SIGKILL)
            self.popen.wait()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


class LocalTransport:
    """Runs a node's command on this machine with subprocess."""

    def start(self, node: NodePlan, secrets: dict[str, str]) -> LocalProcess:
        env = node_environment(node, secrets, dict(os.environ))
        # `python` in the job's command means the launcher's environment, as torchrun's own does.
        if os.path.isabs(node.argv[0]):
            env["PATH"] = os.path.dirname(node.argv[0]) + os.pathsep + env.get("PATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            popen = subprocess.Popen(
                list(node.argv),
                cwd=node.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise RunError(f"{node.host}: cannot start {node.argv[0]}: {exc.strerror or exc}") from None
        return LocalProcess(popen)

    def collect(self, node: NodePlan) -> None:
        """Local ranks write straight into the run directory: nothing to bring back."""

    def close(self) -> None:
        pass
