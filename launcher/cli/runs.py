"""The commands on runs that exist: `launch logs`, `status`, `stop`, `runs`, `rm`, `prune`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import EXIT_FAILED, LaunchError, SpecError
from .parsing import Parser, existing_run_flags

def logs_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="launch logs", allow_abbrev=False, description="Print the logs of a run, prefixed [host/rank].")
    parser.add_argument("run", type=Path, help="a run directory, or a run id under --runs-dir")
    parser.add_argument("--rank", type=int, help="only this global rank")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="print lines as they come, from every host, until the run ends (exit 0 when it succeeded)")
    parser.add_argument("--verbose", "-v", action="store_true", help="show torchrun's own lines too")
    existing_run_flags(parser)
    return parser


def logs(args: argparse.Namespace) -> int:
    from ..results.terminal import SafeOut
    from ..run import existing
    from ..run.console import Console

    run = existing.open_run(existing.find_run(args.run, args.runs_dir))
    if args.rank is not None and run.plan.world_size is not None and not 0 <= args.rank < run.plan.world_size:
        run.close()
        raise SpecError(f"--rank: {args.rank} is not a rank of run {run.plan.run_id}; its ranks are 0 to {run.plan.world_size - 1}")
    console = Console(sys.stdout.buffer, sys.stderr.buffer)  # the ranks' lines on stdout, the launcher's on stderr
    try:
        if run.summary is None and args.follow:  # as an attached launcher shows it
            summary = existing.follow(run, console, args.rank, verbose=args.verbose)
            _render(summary)
            return existing.exit_code(summary)
        existing.describe(run)  # finishes a run that has ended, and collects what a lost host kept
        if run.summary is None:  # still running: what the hosts have so far
            existing.print_so_far(run, console, args.rank)
            return 0
        existing.print_local_logs(run.paths, args.rank, SafeOut(sys.stdout.buffer))
        return existing.exit_code(run.summary) if args.follow else 0
    finally:
        run.close()


def _render(summary: dict) -> None:
    """The summary table an attached launcher ends with, on stderr."""
    from rich.console import Console as RichConsole

    from ..results.summary import render

    render(summary, RichConsole(stderr=True, highlight=False, soft_wrap=True))


def status_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="launch status", allow_abbrev=False, description="The state of runs, per host (asked of the hosts).")
    parser.add_argument("runs", type=Path, nargs="*", help="run directories or run ids (default: every run under --runs-dir)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    existing_run_flags(parser)
    return parser


def status(args: argparse.Namespace) -> int:
    from ..run import existing
    from ..run.console import duration

    roots = [existing.find_run(r, args.runs_dir) for r in args.runs] or existing.list_runs(args.runs_dir)
    rows = []
    for root in roots:
        try:
            run = existing.open_run(root)
        except SpecError as exc:
            if args.runs:
                raise
            print(f"launch: skipping {root}: {exc}", file=sys.stderr)
            continue
        try:
            rows.append(existing.describe(run))
        finally:
            run.close()
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    if not rows:
        print(f"no runs in {args.runs_dir}")
        return 0
    table = [("run", "status", "started", "elapsed", "hosts")]
    for row in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["start_time"])) if row["start_time"] else "-"
        elapsed = duration(row["elapsed_s"]) if row["elapsed_s"] is not None else "-"
        hosts = ", ".join(f"{h} {s}" for h, s in row["hosts"].items())
        table.append((row["run_id"] + (" (detached)" if row["detached"] else ""), row["status"], started, elapsed, hosts))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[4])
    return 0


def stop_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="launch stop", allow_abbrev=False, description="Stop every host's part of a run "
                     "(SIGTERM, then kill after the grace period) and collect its logs.")
    parser.add_argument("run", type=Path, help="a run directory, or a run id under --runs-dir")
    existing_run_flags(parser)
    return parser


def stop(args: argparse.Namespace) -> int:
    from ..plan import STOP_GRACE_S
    from ..run import existing
    from ..run.events import killed_words

    run = existing.open_run(existing.find_run(args.run, args.runs_dir))
    try:
        if run.summary is not None:
            print(f"launch: run {run.plan.run_id} has ended already ({run.summary['status']})")
            return 0
        if run.watched():  # its launcher collects and summarises
            forced, _ = existing.stop_nodes(run)
            killed = {host: [{"command": what, "pid": None}] for host, what in forced.items()}
            summary = None
        else:
            summary = existing.stop(run)
            killed = summary.get("killed") or {}
        for host, processes in killed.items():
            print(killed_words(host, STOP_GRACE_S, processes))
        print(f"launch: stopped run {run.plan.run_id}" + (f" ({summary['status']}); logs in {run.paths.root}" if summary else ""))
        return 0
    finally:
        run.close()


def runs_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch runs", description="List runs, newest first, from their run directories "
                                     "(launch status asks the hosts of runs that have not ended).")
    parser.add_argument("--job", help="only the runs of this job")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    existing_run_flags(parser)
    return parser


def runs(args: argparse.Namespace) -> int:
    from ..run.housekeeping import rows
    from ..run.console import duration

    found = rows(args.runs_dir, args.job)
    if args.json:
        for row in found:
            print(json.dumps(row.to_json()), flush=True)
        return 0
    if not found:
        print(f"no runs in {args.runs_dir}" + (f" of job {args.job}" if args.job else ""))
        return 0
    table = [("run", "job", "status", "started", "wall", "nodes")]
    for row in found:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.start_time))
        wall = duration(row.wall_time_s) if row.wall_time_s is not None else "-"
        table.append((row.run_id, row.job, row.status, started, wall, str(row.nodes)))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def rm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch rm", description="Remove runs that have ended: their run directories, and "
                                     "with --checkpoints their checkpoints and outputs on every host. Each removal is said.")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories, or run ids under --runs-dir")
    parser.add_argument("--checkpoints", action="store_true", help="also remove each run's own folder on its hosts "
                        "(its checkpoints and the files its ranks wrote); without it they stay")
    existing_run_flags(parser)
    return parser


def rm(args: argparse.Namespace) -> int:
    from ..run.existing import find_run
    from ..run.housekeeping import remove

    roots = [find_run(run, args.runs_dir) for run in args.runs]  # every name checked before anything goes
    failed = 0
    for root in roots:
        try:
            remove(root, args.checkpoints, print)
        except (LaunchError, OSError) as exc:  # said, and the other runs go on
            print(f"launch: error: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_FAILED if failed else 0


def prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch prune", description="Remove the ended runs of each job beyond the newest "
                                     "KEEP, as launch rm does. Runs still going are never counted or removed.")
    parser.add_argument("--keep", type=int, required=True, help="how many ended runs of each job to keep (newest first)")
    parser.add_argument("--job", help="only the runs of this job")
    parser.add_argument("--checkpoints", action="store_true", help="also remove those runs' checkpoints and outputs on their hosts")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    existing_run_flags(parser)
    return parser


def prune(args: argparse.Namespace) -> int:
    from ..run.housekeeping import remove, rows, to_prune

    if args.keep < 0:
        raise SpecError(f"--keep: expected 0 or more, got {args.keep}")
    doomed = to_prune(rows(args.runs_dir, args.job), args.keep, args.runs_dir)
    if not doomed:
        print(f"launch: nothing to prune in {args.runs_dir} (keeping {args.keep} ended run(s) per job)")
        return 0
    failed = 0
    for row in doomed:
        if args.dry_run:
            print(f"launch: would remove run {row.run_id} ({row.job}, {row.status})"
                  + (" with its checkpoints and outputs" if args.checkpoints else ""))
            continue
        try:
            remove(row.root, args.checkpoints, print)
        except (LaunchError, OSError) as exc:  # said, and the other runs go on
            print(f"launch: error: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_FAILED if failed else 0
