"""The run directory: the one place that knows where each file of a run lives (README: "Where results land")."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..node import contract


JOBS_FOLDER = "jobs"  # under the runs folder: runs' own folders on this machine, <job>/<host>/<run id>/


def new_run_id(job_name: str, now: float | None = None) -> str:
    """`<job>-<UTC date>-<time>-<4 hex>`: sortable by start time, unique in practice."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{job_name}-{stamp}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunPaths:
    """Every path of one run, under `RUNS/<run_id>/`."""

    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def job_file(self) -> Path:
        return self.root / "job.yaml"

    @property
    def cluster_file(self) -> Path:
        return self.root / "cluster.yaml"

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    @property
    def workdir_file(self) -> Path:
        """The workdir the ranks ran: every file's path, size and content hash, and the hash of all."""
        return self.root / "workdir.json"

    @property
    def summary_file(self) -> Path:
        return self.root / "summary.json"

    @property
    def handle_file(self) -> Path:
        """Which backend runs the run's nodes, and what it needs to find them again."""
        return self.root / "handle.json"

    @property
    def error_file(self) -> Path:
        """The traceback of an error the launcher did not expect, when one ended the run."""
        return self.root / "launcher-error.txt"

    @property
    def lease_file(self) -> Path:
        """Renewed by the launcher that watches the run (and, for a one-box run, the node's lease)."""
        return self.root / contract.LEASE_FILE

    @property
    def logs_dir(self) -> Path:
        return self.root / contract.LOGS

    @property
    def metrics_dir(self) -> Path:
        return self.root / contract.METRICS

    def host_logs_dir(self, host: str) -> Path:
        return self.logs_dir / host

    def rank_log(self, host: str, rank: int) -> Path:
        return self.host_logs_dir(host) / contract.rank_log(rank)

    def rank_status(self, host: str, rank: int) -> Path:
        """Written by the rank's wrapper when the rank ends: exit code and times."""
        return self.host_logs_dir(host) / contract.rank_status(rank)

    def agent_log(self, host: str) -> Path:
        """torchrun's own output on that host (everything that is not a rank's line)."""
        return self.host_logs_dir(host) / contract.AGENT_LOG

    def node_status(self, host: str) -> Path:
        """The node supervisor's record of how the host's part went."""
        return self.host_logs_dir(host) / contract.NODE_STATUS

    def outputs_dir(self, host: str) -> Path:
        """What the ranks of `host` wrote in their working directory, brought back."""
        return self.root / contract.OUTPUTS / host

    def outputs_record(self, host: str) -> Path:
        """What came back from `host` into outputs_dir, and what stayed on it (over the size limit)."""
        return self.host_logs_dir(host) / "outputs.json"

    def metrics_file(self, rank: int) -> Path:
        """The step records the rank's job wrote itself."""
        return self.metrics_dir / contract.metrics_file(rank)

    def auto_metrics_file(self, rank: int) -> Path:
        """The step records launch measured in the rank's Python (for jobs that write none)."""
        return self.metrics_dir / contract.auto_metrics_file(rank)

    def rank_logs(self) -> dict[int, Path]:
        """Every collected rank log, by global rank."""
        found: dict[int, Path] = {}
        for path in self.logs_dir.glob("*/rank*.log"):
            parsed = contract.parse_rank_file(path.name, ".log")
            if parsed and parsed[1] is None:
                found[parsed[0]] = path
        return dict(sorted(found.items()))

    def rank_statuses(self) -> dict[int, dict[str, Any]]:
        """Every rank's status record, by global rank; unreadable ones are skipped."""
        found: dict[int, dict[str, Any]] = {}
        for path in self.logs_dir.glob("*/rank*.status.json"):
            parsed = contract.parse_rank_file(path.name, ".status.json")
            if not parsed or parsed[1] is not None:
                continue
            try:
                record = json.loads(path.read_text())
                found[int(record["rank"])] = record
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return dict(sorted(found.items()))


def new_run_paths(runs_dir: Path, job_name: str) -> RunPaths:
    """Where a new run's directory goes; `create` makes it."""
    return RunPaths(runs_dir.resolve() / new_run_id(job_name))


MADE: list[RunPaths] = []  # the run directories this process made: an unexpected error's traceback goes in the last


def create(paths: RunPaths) -> None:
    """Make the run's directory; refuse one that exists, since a run directory is never reused."""
    try:
        paths.root.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise RunError(f"run directory {paths.root} exists already; run directories are never reused") from None
    except OSError as exc:
        raise RunError(f"cannot create the run directory {paths.root}: {exc.strerror}") from None
    MADE.append(paths)
    try:
        paths.logs_dir.mkdir()
        paths.metrics_dir.mkdir()
    except OSError as exc:
        raise RunError(f"cannot create the run directory {paths.root}: {exc.strerror}") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so a reader never sees half a file; RunError (no temporary file left)
    when the disk is full or read-only."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` whole or not at all; RunError (no temporary file left) when the
    disk is full or read-only."""
    try:
        contract.replace_file(str(path), text.encode())
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}") from None


def copy_input(src: Path | None, dst: Path, fallback_text: str | None = None) -> None:
    """Keep the user's file as given; `fallback_text` when there is no file (the --local inventory)."""
    if src is not None:
        try:
            shutil.copyfile(src, dst)
        except OSError as exc:
            dst.unlink(missing_ok=True)
            raise RunError(f"cannot write {dst}: {exc.strerror or exc}") from None
    elif fallback_text is not None:
        write_text(dst, fallback_text)
