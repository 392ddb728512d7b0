"""`launch`: the command line (DESIGN.md): arguments in, a run (launcher.run.conduct) or a report out."""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .errors import EXIT_INTERRUPTED, LaunchError, SpecError
from .node import contract
from .results.scaling import FILES, load_summaries, markdown, write_scaling
from .run import rundir
from .run.conduct import RunRequest, run_once, sweep
from .spec import ClusterSpec, JobSpec, load_cluster, load_job, local_cluster

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    signal.signal(signal.SIGTERM, _sigterm)  # outside a run's watch loop SIGTERM ends like Ctrl-C
    try:
        if argv and argv[0] == "logs":
            return _logs(_logs_parser().parse_args(argv[1:]))
        if argv and argv[0] == "report":
            return _report(_report_parser().parse_args(argv[1:]))
        if argv and argv[0] == "check":
            return _check(_check_parser().parse_args(argv[1:]))
        return run_job(_run_parser().parse_args(argv))
    except LaunchError as exc:
        if debug:
            traceback.print_exc()
        print(f"launch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("launch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `launch logs RUN | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch",
        description="Run a distributed PyTorch job on the hosts of a cluster inventory. "
        "Other commands: launch check CLUSTER.yaml, launch logs RUN, launch report RUN [RUN ...].",
    )
    parser.add_argument("job", type=Path, help="the job file (job.yaml)")
    parser.add_argument("--cluster", type=Path, help="the inventory to use instead of the job's `cluster`")
    parser.add_argument("--nodes", type=int, help="how many hosts to use instead of the job's `nodes`")
    parser.add_argument("--local", action="store_true", help="run every process on this machine, no SSH")
    parser.add_argument("--dry-run", action="store_true", help="print what would run on every node, change nothing")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run directories go (default: ./runs)")
    parser.add_argument("--sweep", action="store_true", help="run at every node count in the job's `scaling` and compare")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def resolve_cluster(job: JobSpec, args: argparse.Namespace) -> ClusterSpec:
    """--local's one-box inventory, or --cluster, or the job's `cluster`, or cluster.yaml nearby."""
    if args.local:
        return local_cluster(cpus=os.cpu_count() or 1, gpus=_local_gpus())
    if args.cluster:
        return load_cluster(args.cluster)
    if job.cluster:
        return load_cluster(job.cluster)
    beside = job.path.parent / "cluster.yaml"
    return load_cluster(beside if beside.is_file() else Path("cluster.yaml"))


def _local_gpus() -> int:
    return len(glob.glob("/dev/nvidia[0-9]*"))


def run_job(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    cluster = resolve_cluster(job, args)
    if args.sweep:
        if args.nodes is not None:
            raise SpecError("--sweep runs every node count of the job's scaling; leave out --nodes")
        return sweep(job, cluster, args.runs_dir, args.dry_run)
    label = "--nodes" if args.nodes is not None else None
    code, _ = run_once(job, cluster, RunRequest(args.runs_dir, args.nodes, label, args.dry_run))
    return code


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch check", description="Preflight every host of an inventory.")
    parser.add_argument("cluster", type=Path, help="the inventory (cluster.yaml)")
    parser.add_argument("--port", type=int, default=29500, help="the rendezvous port that must be free (default 29500)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _check(args: argparse.Namespace) -> int:
    from .hosts.check import check_cluster

    if not 1 <= args.port <= 65535:
        raise SpecError(f"--port: expected an integer from 1 to 65535, got {args.port}")
    cluster = load_cluster(args.cluster)
    results = check_cluster(cluster, args.port)
    for result in results:
        print(result.line())
    usable = sum(r.ok for r in results)
    print(f"{usable} of {len(results)} host(s) usable")
    return 0 if usable == len(results) else 1


def _report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch report", description="Compare runs of one job across node counts.")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (or run ids under ./runs)")
    parser.add_argument("--out", type=Path, help="where scaling.json/.md/.png go (default: the runs' common folder)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _report(args: argparse.Namespace) -> int:
    runs = [_run_dir(run) for run in args.runs]
    summaries = load_summaries(runs)
    out = args.out or Path(os.path.commonpath([str(run.resolve().parent) for run in runs]))
    rows = write_scaling(out, summaries)
    print(markdown(rows, next(iter(summaries.values()))["job"]))
    print(f"launch: scaling results in {out}: {', '.join(FILES)}")
    return 0


def _logs_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch logs", description="Print the logs of a run, prefixed [host/rank].")
    parser.add_argument("run", type=Path, help="a run directory, or a run id under ./runs")
    parser.add_argument("--rank", type=int, help="only this global rank")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the run ends")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _run_dir(given: Path) -> Path:
    """A run directory as given, or a run id under ./runs."""
    return given if given.is_dir() or given.is_absolute() else Path("runs") / given


def _logs(args: argparse.Namespace) -> int:
    paths = rundir.RunPaths(_run_dir(args.run))
    root = paths.root
    if not paths.plan_file.is_file():
        raise SpecError(f"{args.run}: not a run directory (no plan.json)")
    offsets: dict[Path, int] = {}
    while True:
        done = not args.follow or paths.summary_file.exists()
        logs = paths.rank_logs()
        if args.rank is not None and args.rank not in logs and not args.follow:
            raise SpecError(f"--rank: {args.rank} has no log in {root}; ranks: {', '.join(map(str, logs)) or 'none'}")
        for rank, log in logs.items():
            if args.rank is not None and rank != args.rank:
                continue
            with log.open("rb") as fh:
                fh.seek(offsets.get(log, 0))
                data = fh.read()
            # print whole lines only, so a line being written is not split
            end = len(data) if done else data.rfind(b"\n") + 1
            offsets[log] = offsets.get(log, 0) + end
            prefix = contract.rank_prefix(log.parent.name, rank)
            for line in data[:end].splitlines():
                sys.stdout.buffer.write(prefix + line + b"\n")
        sys.stdout.buffer.flush()
        if done:
            return 0
        time.sleep(0.5)
