"""`launch`: the command line (DESIGN.md). Turns arguments into a spec, a plan, a run, a summary."""

from __future__ import annotations

import argparse
import getpass
import glob
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from rich.console import Console as RichConsole

from . import rundir
from .errors import EXIT_INTERRUPTED, LaunchError, SpecError
from .execute import Console, execute
from .plan import PlanOptions, make_plan
from .spec import ClusterSpec, JobSpec, load_cluster, load_job, local_cluster, select_hosts
from .scaling import FILES, load_summaries, markdown, write_scaling
from .summary import build_summary, render
from .image import image_tag
from .transport import LocalTransport, Transport

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
        return _sweep(job, cluster, args)
    code, _ = run_once(job, cluster, args.nodes, "--nodes" if args.nodes is not None else None, args.runs_dir, args.dry_run)
    return code


def run_once(
    job: JobSpec, cluster: ClusterSpec, nodes: int | None, nodes_label: str | None, runs_dir: Path, dry_run: bool
) -> tuple[int, dict | None]:
    """One run of the job on `nodes` hosts: its exit code and summary (None for a dry run)."""
    hosts = select_hosts(job, cluster, nodes, nodes_label)
    missing = [name for name in job.secrets if name not in os.environ]
    if missing:
        raise SpecError(f"{job.path}: secrets: {missing[0]} is not set in the launcher's environment")
    secrets = {name: os.environ[name] for name in job.secrets}
    multiline = [name for name, value in secrets.items() if "\n" in value]
    if multiline:
        raise SpecError(f"{job.path}: secrets: the value of {multiline[0]} has a line break; secrets must be one line")
    remote = any(not h.is_local for h in hosts)

    paths = rundir.new_run_paths(runs_dir, job.name)
    options = PlanOptions(
        run_dir=str(paths.root),
        local_python=sys.executable,
        local_cpus=os.cpu_count() or 1,
        image=image_tag(job) if remote and job.runtime == "docker" else None,
        local_user=getpass.getuser(),
    )
    plan = make_plan(job, hosts, paths.run_id, options)  # every check before anything starts
    if dry_run:
        print(plan.describe())
        return 0, None

    console = Console()
    transport: Transport
    if remote:
        from .deploy import deploy  # SSH and Docker libraries: imported only for lab runs
        from .remote import SshTransport

        deployment = deploy(job, hosts, console.say)
        built = deployment.image.tag if deployment.image else None  # the image that was shipped
        plan = make_plan(job, hosts, paths.run_id, replace(options, nics=deployment.nics, image=built))
        transport = SshTransport({h.name: h for h in hosts}, paths, plan.run_id, job.workdir, deployment.conns)
    else:
        transport = LocalTransport()

    rundir.create(paths)
    rundir.copy_input(job.path, paths.job_file)
    rundir.copy_input(cluster.path, paths.cluster_file, fallback_text=_local_inventory_text(cluster))
    rundir.write_json(paths.plan_file, plan.to_json())

    console.say(f"launch: run {plan.run_id} on {plan.nnodes} node(s); run directory {paths.root}")
    try:
        outcome = execute(plan, transport, paths, secrets, console)
    finally:
        transport.close()
    summary = build_summary(plan, outcome, paths)
    rundir.write_json(paths.summary_file, summary)
    render(summary, RichConsole(highlight=False, soft_wrap=True))
    return outcome.exit_code, summary


def _sweep(job: JobSpec, cluster: ClusterSpec, args: argparse.Namespace) -> int:
    """The job at every node count of `scaling`, then scaling.json/.md/.png beside those runs."""
    if args.nodes is not None:
        raise SpecError("--sweep runs every node count of the job's scaling; leave out --nodes")
    if not job.scaling:
        raise SpecError(f"{job.path}: scaling: --sweep needs node counts, e.g. scaling: [1, 2, 3]")
    for count in job.scaling:
        select_hosts(job, cluster, count, f"{job.path}: scaling")
    sweep_dir = args.runs_dir.resolve() / rundir.new_run_id(f"{job.name}-sweep")
    summaries: dict[str, dict] = {}
    code = 0
    for count in job.scaling:
        if not args.dry_run:
            print(f"launch: sweep {sweep_dir.name}: {count} node(s)", flush=True)
        try:
            code, summary = run_once(job, cluster, count, f"{job.path}: scaling", sweep_dir, args.dry_run)
        except LaunchError as exc:  # keep what the finished counts measured
            print(f"launch: error: {exc}", file=sys.stderr)
            code, summary = exc.exit_code, None
        if summary is not None and code == 0:
            summaries[str(sweep_dir / summary["run_id"])] = summary
        if code != 0:
            print(f"launch: sweep stopped: the run at {count} node(s) ended with exit code {code}", file=sys.stderr)
            break
    if summaries:
        rows = write_scaling(sweep_dir, summaries)
        print(markdown(rows, job.name))
        print(f"launch: scaling results in {sweep_dir}: {', '.join(FILES)}")
    return code


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch check", description="Preflight every host of an inventory.")
    parser.add_argument("cluster", type=Path, help="the inventory (cluster.yaml)")
    parser.add_argument("--port", type=int, default=29500, help="the rendezvous port that must be free (default 29500)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _check(args: argparse.Namespace) -> int:
    from .check import check_cluster

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


def _local_inventory_text(cluster: ClusterSpec) -> str:
    host = cluster.hosts[0]
    return f"# --local: this machine\nhosts:\n  - name: {host.name}\n    address: local\n    gpus: {host.gpus}\n    slots: {host.slots}\n"


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
            prefix = f"[{log.parent.name}/{rank}] ".encode()
            for line in data[:end].splitlines():
                sys.stdout.buffer.write(prefix + line + b"\n")
        sys.stdout.buffer.flush()
        if done:
            return 0
        time.sleep(0.5)
