"""Which earlier run a `--resume` starts from, and where that run's own folders are on each host.

Every run keeps its checkpoints and outputs in a folder of its own on each host
(`launcher.node.workspace`); a resumed run starts with copies of what the run it resumes from
kept, so neither run ever changes the other's files. `--resume` alone (or `resume: true`) takes
the newest earlier run of the job, in the runs folder, that kept any; `--resume RUN` takes that run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError
from ..plan import LaunchPlan
from .existing import find_run, list_runs
from ..record.rundir import RunPaths

LATEST = "latest"  # `--resume` without a run: the newest earlier run of the job that kept files


@dataclass(frozen=True)
class ResumeSource:
    run_id: str
    folders: dict[str, str] = field(default_factory=dict)  # host -> that run's own folder on it
    kept: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> files kept, by kind (when known)


def find_source(runs_dir: Path, job: str, hosts: list[str], which: str) -> ResumeSource | None:
    """The run to resume from (None: no earlier run of `job` kept files on these hosts); SpecError
    for a named run that cannot be resumed here."""
    if which != LATEST:
        root = find_run(Path(which), runs_dir)
        plan = _plan(root)
        if plan is None:
            raise SpecError(f"--resume {which}: {root / 'plan.json'} cannot be read as a run's plan")
        if plan.job != job:
            raise SpecError(f"--resume {which}: run {plan.run_id} is of job '{plan.job}', not '{job}'")
        source = _source(root, plan, hosts)
        if not source.folders:
            raise SpecError(f"--resume {which}: run {plan.run_id} ran on {', '.join(n.host for n in plan.nodes)}, "
                            f"none of which is in this run ({', '.join(hosts)})"
                            if not any(n.host in hosts for n in plan.nodes) else
                            f"--resume {which}: run {plan.run_id} has no folder of its own on its hosts "
                            "(it ran before runs kept their checkpoints apart)")
        return source
    for root in reversed(list_runs(runs_dir)):
        if root.parent.resolve() != runs_dir.resolve():
            continue  # a sweep's runs are its own
        plan = _plan(root)
        if plan is None or plan.job != job:
            continue
        source = _source(root, plan, hosts)
        if any(sum(kinds.values()) for kinds in source.kept.values()):
            return source
    return None


def _plan(root: Path) -> LaunchPlan | None:
    try:
        return LaunchPlan.from_json(json.loads(RunPaths(root).plan_file.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _source(root: Path, plan: LaunchPlan, hosts: list[str]) -> ResumeSource:
    """The run's folders on the hosts it shares with this run, and what its nodes said they kept."""
    paths = RunPaths(root)
    folders, kept = {}, {}
    for node in plan.nodes:
        if node.host not in hosts or not node.state_dir:
            continue
        folders[node.host] = node.state_dir
        try:
            record = json.loads(paths.node_status(node.host).read_text())
            kept[node.host] = {k: int(v) for k, v in (record.get("kept") or {}).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    return ResumeSource(plan.run_id, folders, kept)
