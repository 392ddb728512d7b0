"""What the ranks wrote in their working directory, brought back into the run directory.

When a node's part ends, its supervisor takes the unchanged code out of the ranks' working
directory (`launcher.node.workspace`); what is left there is the run's outputs. Collecting a node
copies those that match the job's `outputs` globs into `outputs/<host>/`, in path order, up to the
job's `outputs_limit` per host; what is over it stays on the host, in the run's own folder, and is
named in the host's record. The choice is pure (`choose`); the copying is each backend's.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..plan import LaunchPlan, NodePlan
from . import rundir
from .rundir import RunPaths

MAX_SKIPPED_NAMED = 20  # files over the limit named in a host's record (the count is always whole)


@dataclass
class Choice:
    """The outputs of one node to bring back, and those left on its host."""

    take: list[tuple[str, int]] = field(default_factory=list)  # (path in the working directory, bytes)
    left: list[tuple[str, int]] = field(default_factory=list)  # matched, but over the limit

    def record(self, left_at: str, limit: int | None) -> dict[str, Any]:
        return {
            "files": len(self.take),
            "bytes": sum(size for _, size in self.take),
            "limit_bytes": limit,
            "left_on_host": [path for path, _ in self.left[:MAX_SKIPPED_NAMED]],
            "left_on_host_count": len(self.left),
            "left_on_host_bytes": sum(size for _, size in self.left),
            "left_at": left_at,
        }


def choose(found: list[tuple[str, int]], patterns: tuple[str, ...], limit: int | None,
           code: dict[str, int] | None = None) -> Choice:
    """The files (path, size) that match a pattern, in path order, while their sum stays within
    `limit`. A file that is the job's code, unchanged by its size (`code`: path -> size; left
    there when a node could not tidy its folder), is not an output."""
    choice, total = Choice(), 0
    for path, size in sorted(found):
        if code is not None and code.get(path) == size:
            continue
        if not any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
            continue
        if limit is not None and total + size > limit:
            choice.left.append((path, size))
            continue
        choice.take.append((path, size))
        total += size
    return choice


def collect(paths: RunPaths, node: NodePlan, plan: LaunchPlan, found: list[tuple[str, int]],
            fetch: Callable[[str, Path], None]) -> None:
    """Bring back a node's outputs: of `found` (path in its working directory, bytes), those `choose`
    takes, each by `fetch(path, destination)` (the backend's copy), then the host's record."""
    choice = choose(found, plan.outputs, plan.outputs_limit, untidied_code(paths, node.host))

    def to_run_directory(rel: str) -> None:
        target = local_destination(paths, node.host, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fetch(rel, target)
        except PermissionError:
            target.unlink(missing_ok=True)
            raise

    bring_back(choice, to_run_directory)
    keep_record(paths, node, choice, plan)


def bring_back(choice: Choice, fetch: Callable[[str], None]) -> None:
    """`fetch(path)` of every chosen output; one that cannot be read (a job's private file) stays on
    the host with the others over the limit, rather than failing the host's whole collection."""
    for path, size in list(choice.take):
        try:
            fetch(path)
        except PermissionError:
            choice.take.remove((path, size))
            choice.left.append((path, size))


def untidied_code(paths: RunPaths, host: str) -> dict[str, int] | None:
    """The job's code files and their sizes, from the run's workdir record, when the node of `host`
    could not take the unchanged code out of its working directory (its record says no `kept`);
    None when it did (what is there is then all the run's)."""
    try:
        if isinstance(json.loads(paths.node_status(host).read_text()).get("kept"), dict):
            return None
    except (OSError, ValueError, AttributeError):
        pass
    try:
        rows = json.loads(paths.workdir_file.read_text())["files"]
        return {str(row[0]): int(row[2]) for row in rows}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def keep_record(paths: RunPaths, node: NodePlan, choice: Choice, plan: LaunchPlan) -> None:
    """The host's record of what came back and what stayed there."""
    left_at = f"{node.state_dir}/work" if node.state_dir else ""
    rundir.write_json(paths.outputs_record(node.host), choice.record(left_at, plan.outputs_limit))


def local_destination(paths: RunPaths, host: str, rel: str) -> Path:
    """Where an output of `host` goes in the run directory; ValueError for a path that would leave it."""
    root = paths.outputs_dir(host)
    target = (root / rel).resolve()
    if root.resolve() not in target.parents:
        raise ValueError(f"output path {rel!r} leaves the outputs folder")
    return target
