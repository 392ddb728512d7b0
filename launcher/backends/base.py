"""The interface between a run and the machines its nodes run on.

The conductor (`launcher.run.conduct`), the follower (`launcher.run.follow`) and the commands on
existing runs (`status`, `logs`, `stop`) use a run's nodes through a `Backend` alone: they never
know whether a node is a process on this machine (`launcher.backends.local`) or a lab host reached
over SSH (`launcher.backends.ssh`). A backend is recorded in the run directory by name
(`handle.json`), so that every later command on the run picks the same one.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..errors import LaunchError, RunError
from ..plan import LaunchPlan, NodePlan, PlanOptions

if TYPE_CHECKING:
    from ..record.outcome import Phases
    from ..spec import Host, JobSpec
    from ..sync.manifest import Manifest

OUTPUT_CHUNK = 8 << 20  # at most this much of a node's output is read at once
LIVE_LIMIT = 64 << 20  # an attached node's output not yet shown, at most
EXTRA_WAIT_S = 5.0  # beyond the grace period, for the node's supervisor to finish its own stop


class Backend(Protocol):
    name: str  # what handle.json records: "local", "ssh"

    def prepare(self, job: "JobSpec", hosts: "tuple[Host, ...]", run_id: str, options: PlanOptions,
                manifest: "Manifest", say: Callable[[str], None], phases: "Phases") -> LaunchPlan:
        """Get the machines ready for the run (the job's image and code where they are needed, the
        rendezvous ports checked) and return its plan; nothing is started."""

    def describe(self, job: "JobSpec", hosts: "tuple[Host, ...]", run_id: str, options: PlanOptions, manifest: "Manifest") -> str:
        """For --dry-run: the plan, and what `prepare` would build and send where (asks, changes nothing)."""

    def submit(self, plan: LaunchPlan, secrets: dict[str, str], attached: bool) -> None:
        """Start every node's part of the planned run (secret values from `secrets`, never from the
        plan); when one cannot start, stop and clean up the ones started, and raise. `attached`: the
        launcher follows the nodes' output as it streams and renews their leases."""

    def queued(self) -> str | None:
        """Why the run's nodes have not started yet (a scheduler's queue); None when they are not waiting."""

    def requeued(self) -> bool | None:
        """After nodes were stopped from outside the launcher: whether a scheduler requeued the run (its
        nodes start again; follow on), None while that cannot be told yet."""

    def facts(self, plan: LaunchPlan) -> dict[str, Any]:
        """What the run's summary says of where it ran, beyond the plan (a scheduler's job id, its nodes)."""

    def renew(self, node: NodePlan) -> None:
        """Renew the node's lease (an attached run); raise when the node cannot be reached."""

    def exit_code(self, node: NodePlan) -> int | None:
        """The exit code of the node's part, once it has ended, when this backend started it
        attached; None otherwise (ask `state`)."""

    def state(self, node: NodePlan) -> dict[str, Any]:
        """The node's status record (`contract.NODE_STATUS`, {} before it wrote one) plus `alive`:
        whether any process of the node's part still runs."""

    def read_output(self, node: NodePlan, offset: int) -> bytes:
        """The node's output (`contract.NODE_OUTPUT`: rank lines, torchrun's lines, events) from
        `offset` on, at most OUTPUT_CHUNK of it; b"" when there is nothing new."""

    def wait_output(self, node: NodePlan, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until all of an attached node's output has been received, so
        that `read_output` has all of it."""

    def stop(self, node: NodePlan, grace_s: float) -> str | None:
        """Stop the node's part, whether this launcher started it or not: ask, then force after
        `grace_s`. What had to be forced (None when nothing was)."""

    def collect(self, node: NodePlan, plan: LaunchPlan) -> None:
        """Bring the node's logs, metrics and outputs into the run directory, then remove its
        part's files on its host."""

    def close(self) -> None:
        """Let go of connections."""


class WithoutScheduler:
    """What a backend whose nodes start when it starts them says of a scheduler: no queue, no
    requeue, nothing for the summary beyond the plan."""

    def queued(self) -> str | None:
        return None

    def requeued(self) -> bool | None:
        return False

    def facts(self, plan: LaunchPlan) -> dict[str, Any]:
        return {}


def node_environment(node: NodePlan, secrets: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """The environment of a node's command: `base`, the plan's variables, and the node's secrets."""
    env = dict(base)
    env.update(node.env)
    env.update({name: secrets[name] for name in node.secrets})
    return env


class LiveOutput:
    """A node's output as its attached command streams it (a pipe, an SSH channel), read by offset as
    a node's output file is: a thread moves the stream into a buffer, which the follower drains (what
    it has read is let go)."""

    def __init__(self, read_chunk: Callable[[], bytes]) -> None:
        self.lock = threading.Lock()
        self.data = bytearray()
        self.base = 0  # the offset of data[0]
        self.ended = threading.Event()
        threading.Thread(target=self._pump, args=(read_chunk,), daemon=True).start()

    def _pump(self, read_chunk: Callable[[], bytes]) -> None:
        try:
            while chunk := read_chunk():
                with self.lock:
                    self.data += chunk
                while len(self.data) > LIVE_LIMIT:  # a stalled terminal holds the node back, as a pipe would
                    time.sleep(0.05)
        except (OSError, ValueError, EOFError):  # the stream was closed under the reader: its end
            pass
        finally:
            self.ended.set()

    def read(self, offset: int) -> bytes:
        with self.lock:
            if offset > self.base:
                del self.data[: offset - self.base]
                self.base = offset
            return bytes(self.data[:OUTPUT_CHUNK])


def start_every_node(plan: LaunchPlan, start: Callable[[NodePlan], None], stop: Callable[[NodePlan], object]) -> None:
    """`start` every node at once; when one cannot start, stop the ones that did and raise (a
    RunError naming the first node, in plan order, that could not start)."""
    from ..hosts.parallel import on_every_host

    started, errors = on_every_host(plan.nodes, start, lambda n: n.host)
    if not errors:
        return
    # every node at once, the failed ones too: a start that timed out may have started something
    on_every_host(plan.nodes, stop, lambda n: n.host)  # what cannot be stopped ends by its lease or state
    host = next(n.host for n in plan.nodes if n.host in errors)
    if not isinstance(errors[host], LaunchError):
        raise errors[host]
    error = RunError(f"could not start node {host}: {errors[host]}; stopped the {len(started)} node(s) that had started")
    error.host = host  # type: ignore[attr-defined]
    raise error
