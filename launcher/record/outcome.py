"""How a run ended (or stands): what the attached launcher, and the commands on existing runs, hand to the summary."""

from __future__ import annotations

import enum
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK


class RunState(str, enum.Enum):
    """How a run stands (summary.json's `status`, and `launch status`)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # by `launch stop`
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM to an attached launcher
    LOST = "lost"  # the launcher watching it went away, and the nodes stopped on their own


@dataclass
class RunOutcome:
    status: RunState
    wall_time_s: float = 0.0
    node_exit_codes: dict[str, int | None] = field(default_factory=dict)
    failed_node: str | None = None  # the first node seen ending with an error
    reason: str | None = None  # why the launcher ended the run, when it did
    collect_errors: dict[str, str] = field(default_factory=dict)  # host -> why its files are missing
    lost_host: str | None = None  # a host that stopped answering, when that ended the run
    forced: dict[str, str] = field(default_factory=dict)  # host -> what the launcher had to kill (its node did not stop)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase (`Phases`)
    before_supervisor: dict[str, list[str]] = field(default_factory=dict)  # host -> what its node printed before its supervisor ran
    unexpected: str | None = None  # the traceback of an error the launcher did not expect, which ended the run

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.status)


def exit_code_of(status: RunState | str) -> int:
    """The launcher's exit code for a run that ended so: 0 when it succeeded, 130 when the launcher
    was interrupted, 1 otherwise."""
    if status == RunState.SUCCEEDED:
        return EXIT_OK
    return EXIT_INTERRUPTED if status == RunState.INTERRUPTED else EXIT_FAILED


class Phases:
    """Where a run's wall time went: seconds per phase (connect, build, ship, workdir, start, run,
    collect), in the order they happened."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started
