"""Runs listed and removed: `launch runs`, `launch rm`, `launch prune`.

Nothing of a run goes unless the user names it (or a keep count it falls outside), and every
removal is said. A run's directory holds its logs, metrics and outputs; its checkpoints and the
files its ranks wrote live in the run's own folder on each host (`summary.json`'s `run_folders`),
which goes only with `--checkpoints`.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import RunError, SpecError
from ..plan import LaunchPlan, NodePlan, PlanOptions, run_state_dir
from .existing import list_runs, open_run
from ..record.rundir import JOBS_FOLDER, RunPaths

Say = Callable[[str], None]


@dataclass(frozen=True)
class RunRow:
    run_id: str
    job: str
    status: str  # summary.json's, or "not ended" (`launch status` asks the hosts)
    start_time: float
    wall_time_s: float | None
    nodes: int
    root: Path

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "job": self.job, "status": self.status, "start_time": self.start_time,
                "wall_time_s": self.wall_time_s, "nodes": self.nodes, "run_dir": str(self.root)}


def rows(runs_dir: Path, job: str | None = None) -> list[RunRow]:
    """The runs under `runs_dir` (sweeps' too), newest first, from their files alone."""
    found = []
    for root in list_runs(runs_dir):
        try:
            plan = json.loads((root / "plan.json").read_text())
            summary = _summary(root)
            row = RunRow(str(plan["run_id"]), str(plan["job"]), str(summary["status"]) if summary else "not ended",
                         (root / "plan.json").stat().st_mtime, summary.get("wall_time_s") if summary else None,
                         int(plan["nnodes"]), root)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if job is None or row.job == job:
            found.append(row)
    return sorted(found, key=lambda r: (r.start_time, r.run_id), reverse=True)


def remove(root: Path, checkpoints: bool, say: Say) -> None:
    """Remove a run that has ended: its run directory, and with `checkpoints` its own folder on every
    host first. RunError (the run directory kept) when a host's folder could not be removed."""
    paths = RunPaths(root.resolve())
    if _summary(paths.root) is None:
        raise SpecError(f"run {paths.run_id} has not ended (launch status tells; launch stop {paths.run_id} ends it); "
                        "a run that is going is not removed")
    run = open_run(paths.root)
    folders = (_summary(paths.root) or {}).get("run_folders")
    try:
        kept = [n for n in run.plan.nodes if n.state_dir and (folders is None or n.host in folders)]
        if checkpoints:
            failed = []
            for node in kept:
                try:
                    _remove_folder(run, node)
                    say(f"launch: removed run {run.plan.run_id}'s checkpoints and outputs on {node.host}: {node.state_dir}")
                except (RunError, OSError) as exc:
                    failed.append(f"{node.host}: {exc}")
            if failed:
                raise RunError(f"could not remove run {run.plan.run_id}'s own folder on {'; '.join(failed)}; "
                               f"its run directory {paths.root} stays, so that you can try again")
    finally:
        run.close()
    shutil.rmtree(paths.root)
    say(f"launch: removed run directory {paths.root}")
    if kept and not checkpoints:
        where = ", ".join(f"{n.host}:{n.state_dir}" for n in kept)
        say(f"launch: kept run {run.plan.run_id}'s checkpoints and outputs ({where}); add --checkpoints to remove them too")


def to_prune(all_rows: list[RunRow], keep: int, runs_dir: Path) -> list[RunRow]:
    """The ended runs directly under `runs_dir` beyond the newest `keep` of each job (runs still going,
    and a sweep's runs, which its scaling files name, are never counted or removed)."""
    seen: dict[str, int] = {}
    doomed = []
    for row in all_rows:  # newest first
        if row.status == "not ended" or row.root.parent.resolve() != runs_dir.resolve():
            continue
        seen[row.job] = seen.get(row.job, 0) + 1
        if seen[row.job] > keep:
            doomed.append(row)
    return doomed


def _summary(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads(RunPaths(root).summary_file.read_text())
    except (OSError, ValueError):
        return None


def is_own_folder(root: Path, plan: LaunchPlan, node: NodePlan) -> bool:
    """Whether `node.state_dir` is the folder the launcher makes for this run on that host, as
    plan.json says it: a plan.json edited by hand cannot point a removal anywhere else."""
    name = r"[A-Za-z0-9][A-Za-z0-9._-]*"
    if not (re.fullmatch(name, plan.job) and re.fullmatch(name, node.host) and plan.run_id == root.name
            and re.fullmatch(re.escape(plan.job) + r"-\d{8}-\d{6}-[0-9a-f]{4}", plan.run_id)):
        return False
    if node.is_local:
        return node.state_dir == run_state_dir(str(root.parent / JOBS_FOLDER), plan.job, node.host, plan.run_id)
    user_root = node.state_dir[:-len(run_state_dir("", plan.job, node.host, plan.run_id))]
    return (node.state_dir.endswith(run_state_dir("", plan.job, node.host, plan.run_id))
            and user_root.startswith(PlanOptions.remote_jobs + "-") and "/" not in user_root[len(PlanOptions.remote_jobs) + 1:]
            and posixpath.normpath(node.state_dir) == node.state_dir)


def _remove_folder(run, node: NodePlan) -> None:
    """The run's own folder on `node`'s host, once `is_own_folder` says it is."""
    plan: LaunchPlan = run.plan
    if not is_own_folder(run.paths.root, plan, node):
        raise RunError(f"{node.state_dir} is not the folder launch makes for run {plan.run_id}; not removed")
    if node.is_local:
        if Path(node.state_dir).exists():
            shutil.rmtree(node.state_dir)
        return
    from ..hosts.ssh import run as ssh_run

    conn = run.backend.control(node.host)  # type: ignore[attr-defined]
    code, out = ssh_run(conn, ["rm", "-rf", "--", node.state_dir], timeout=600)
    if code != 0 and node.image:  # files its container wrote as another user: removed from a container of the image
        parent, name = node.state_dir.rsplit("/", 1)
        code, out = ssh_run(conn, ["docker", "run", "--rm", "--volume", f"{parent}:/launch/parent", "--entrypoint", "rm",
                                   node.image, "-rf", "--", f"/launch/parent/{name}"], timeout=600)
    if code != 0:
        raise RunError(out.strip()[-300:] or f"rm exited with code {code}")
