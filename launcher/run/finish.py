"""Finishing a run: every reachable node's files brought into the run directory, then its summary
written. The one place that does it, whoever notices the end first (the attached launcher, `launch
status`, `launch logs --follow`, `launch stop`); a lock in the run directory makes it happen once.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..backends.base import Backend
from ..errors import LaunchError
from ..hosts.parallel import on_every_host
from ..plan import LaunchPlan
from ..record import rundir
from ..record.outcome import Phases, RunOutcome
from ..record.rundir import RunPaths
from ..results.summary import build_summary

Say = Callable[[str], None]


def read_summary(paths: RunPaths) -> dict[str, Any] | None:
    try:
        return json.loads(paths.summary_file.read_text())
    except (OSError, ValueError):
        return None


def finish(paths: RunPaths, plan: LaunchPlan, backend: Backend, outcome: RunOutcome, say: Say,
           unreachable: set[str] | None = None, phases: Phases | None = None) -> dict[str, Any]:
    """Collect every node's files (not of `unreachable` hosts: theirs stay on them), write the
    summary (and the traceback of an unexpected error) and return it; the summary written already
    when another command finished the run first. `phases`: the attached launcher's, to which the
    collection's time is added (and to the run's wall time)."""
    with held(paths):
        done = read_summary(paths)
        if done is not None:
            return done
        if phases is None:
            collect_all(plan, backend, unreachable or set(), outcome, say)
        else:
            with phases.timing("collect"):
                collect_all(plan, backend, unreachable or set(), outcome, say)
            outcome.wall_time_s += phases.seconds["collect"]
            outcome.phases = {name: s for name, s in phases.seconds.items() if name != "stop" or s >= 0.05}
        summary = build_summary(plan, outcome, paths)
        _add_facts(summary, backend.facts(plan))
        if outcome.unexpected:
            summary["error"] = {"traceback_file": str(paths.error_file), "message": outcome.unexpected.strip().splitlines()[-1]}
            try:
                rundir.write_text(paths.error_file, outcome.unexpected)
            except LaunchError as exc:
                say(f"launch: {exc}")
        try:
            rundir.write_json(paths.summary_file, summary)
        except LaunchError as exc:
            say(f"launch: {exc}; the summary below is only on this terminal")
        return summary


def _add_facts(summary: dict[str, Any], facts: dict[str, Any]) -> None:
    """The backend's facts into the summary; a queue's wait among the phases, first."""
    facts = dict(facts)
    queued = facts.pop("queued_s", None)
    if isinstance(queued, (int, float)):
        phases = dict(summary.get("phases_s") or {})
        if "run" in phases:  # the run's watch began at the submission: its wait in the queue is not run time
            phases["run"] = round(max(0.0, phases["run"] - queued), 3)
        summary["phases_s"] = {"queued": round(queued, 3), **phases}
    summary.update(facts)


def collect_all(plan: LaunchPlan, backend: Backend, unreachable: set[str], outcome: RunOutcome, say: Say) -> None:
    """Every reachable node's logs and metrics into the run directory; what could not be, said and
    kept in `outcome.collect_errors`."""
    reachable = [node for node in plan.nodes if node.host not in unreachable]
    # every host at once; one host's trouble never loses the others' results
    _, errors = on_every_host(reachable, lambda node: backend.collect(node, plan), lambda node: node.host)
    for node in plan.nodes:
        if node.host in unreachable:
            outcome.collect_errors[node.host] = f"unreachable; its logs stay on it ({node.node_dir})"
        elif node.host in errors:
            outcome.collect_errors[node.host] = str(errors[node.host]) or type(errors[node.host]).__name__
        else:
            continue
        say(f"launch: could not collect the logs of {node.host}: {outcome.collect_errors[node.host]}")


@contextmanager
def held(paths: RunPaths) -> Iterator[None]:
    """The run's finishing lock (on its directory: no file of its own), waited for."""
    try:
        fd = os.open(paths.root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # not there: nothing to finish in it but what the caller writes
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
