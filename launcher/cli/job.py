"""`launch JOB`, `launch check` and `launch report`: a run (`launcher.run.conduct`), a preflight,
or a comparison of runs."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
from pathlib import Path

from .. import __version__
from ..errors import SpecError
from ..results.scaling import FILES, load_summaries, markdown, write_scaling
from ..run.conduct import RunRequest, on_one_box, run_once, sweep
from ..spec import MAX_NPROC_PER_NODE, ClusterSpec, JobSpec, check_env_name, load_cluster, load_job, local_cluster
from .parsing import Parser, existing_run_flags

EXIT_CODES = ("exit codes: 0 the run succeeded (or the command did its work); 1 the run failed, was stopped or could "
              "not be carried out; 2 bad input (nothing was started); 130 interrupted (Ctrl-C, SIGTERM, the terminal closed)")
EXAMPLES = """examples:
  launch jobs/resnet18-cifar10/job.yaml --local            every process on this machine
  launch job.yaml --nodes 2 --env LR=0.1 -- --epochs 3     2 hosts, one more variable, arguments for the command
  launch job.yaml --detach; launch logs RUN --follow       a run that outlives this terminal
  launch check cluster.yaml                                preflight every host"""



def run_parser() -> argparse.ArgumentParser:
    from ..spec.yamlfile import file_in_folder

    parser = Parser(
        prog="launch",
        allow_abbrev=False,
        usage="launch JOB.yaml [options] [-- ARGS...]\n       launch {check,status,logs,stop,report,runs,rm,prune} ... (each has --help)",
        description="Run a distributed PyTorch job on the hosts of a cluster inventory. "
        "Other commands: launch check CLUSTER.yaml|JOB.yaml, launch status [RUN ...], launch logs RUN [--follow], "
        "launch stop RUN, launch report RUN [RUN ...], launch runs, launch rm RUN [--checkpoints], launch prune --keep N. "
        "ARGS after -- are appended to the job's command.",
        epilog=f"{EXIT_CODES}\n\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"launch {__version__}")
    parser.add_argument("job", type=lambda given: file_in_folder(given, ("job.yaml",)),
                        help="the job file (job.yaml), or the folder that holds it")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set a variable for every rank, over the job's env (repeatable)")
    parser.add_argument("--nproc-per-node", type=int, metavar="N", help="processes per node instead of the job's nproc_per_node")
    parser.add_argument("--cluster", type=Path, help="the inventory to use instead of the job's `cluster`")
    parser.add_argument("--nodes", type=int, help="how many hosts to use instead of the job's `nodes`")
    parser.add_argument("--local", action="store_true", help="run every process on this machine, no SSH")
    parser.add_argument("--dry-run", action="store_true", help="print what would run on every node, change nothing")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run directories go (default: ./runs)")
    parser.add_argument("--sweep", action="store_true", help="run at every node count in the job's `scaling` and compare")
    parser.add_argument("--detach", action="store_true", help="return once every node has started; the run goes on without "
                        "this terminal (see launch status, logs --follow, stop)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                        help="start from the checkpoints and outputs of the job's newest earlier run that kept any, "
                        "or of RUN (copied: that run's files stay as they are)")
    parser.add_argument("--verbose", "-v", action="store_true", help="show torchrun's own lines too (always in logs/<host>/torchrun.log)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def resolve_cluster(job: JobSpec, args: argparse.Namespace) -> ClusterSpec:
    """--local's one-box inventory, or --cluster, or the job's `cluster`, or cluster.yaml nearby."""
    if args.local:
        if args.cluster:
            raise SpecError("--local runs every process on this machine, without an inventory; leave out --cluster")
        return local_cluster(cpus=os.cpu_count() or 1, gpus=_local_gpus())
    if args.cluster:
        return load_cluster(args.cluster, origin="--cluster")
    if job.cluster:
        return load_cluster(job.cluster, origin=f"{job.path}: cluster")
    beside = job.path.parent / "cluster.yaml"
    return load_cluster(beside if beside.is_file() else Path("cluster.yaml"), origin="the default inventory")


def with_overrides(job: JobSpec, env: list[str], nproc: int | None, extra: list[str]) -> JobSpec:
    """The job with --env, --nproc-per-node and the arguments after `--`, checked as the job's own are."""
    values = dict(job.env)
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--env: expected KEY=VALUE, got {item!r}")
        check_env_name(key, f"--env {key}")
        if key in job.secrets:
            raise SpecError(f"--env {key}: is one of the job's secrets; a secret's value comes only from the launcher's environment")
        values[key] = value
    if nproc is not None and not 1 <= nproc <= MAX_NPROC_PER_NODE:
        raise SpecError(f"--nproc-per-node: expected an integer from 1 to {MAX_NPROC_PER_NODE}, got {nproc}")
    return dataclasses.replace(job, env=values, command=job.command + tuple(extra),
                               nproc_per_node=nproc if nproc is not None else job.nproc_per_node)


def _local_gpus() -> int:
    return len(glob.glob("/dev/nvidia[0-9]*"))


def run_job(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    job = with_overrides(load_job(args.job), args.env, args.nproc_per_node, extra or [])
    if args.runs_dir.exists() and not args.runs_dir.is_dir():
        raise SpecError(f"--runs-dir: {args.runs_dir} is not a folder")
    cluster = resolve_cluster(job, args)
    if args.sweep:
        if args.nodes is not None:
            raise SpecError("--sweep runs every node count of the job's scaling; leave out --nodes")
        if args.detach:
            raise SpecError("--sweep runs one node count after the other and cannot --detach")
        if args.resume:
            raise SpecError("--sweep measures every node count from the start and cannot --resume")
        return sweep(job, cluster, RunRequest(args.runs_dir, dry_run=args.dry_run, debug=args.debug, verbose=args.verbose),
                     local=args.local)
    label = "--nodes" if args.nodes is not None else None
    if args.local:
        job, args.nodes = on_one_box(job, args.nodes), None
    code, _ = run_once(job, cluster, RunRequest(args.runs_dir, args.nodes, label, args.dry_run, args.detach, args.resume,
                                                args.debug, args.verbose))
    return code


def check_parser() -> argparse.ArgumentParser:
    from ..spec.yamlfile import file_in_folder

    parser = Parser(prog="launch check", allow_abbrev=False, description="Preflight every host of an inventory, or every "
                     "host a job would use as the job needs it (its base image here, a python with the "
                     "same torch on runtime: host hosts, GPUs for its processes, the rendezvous port).")
    parser.add_argument("cluster", type=lambda given: file_in_folder(given, ("job.yaml", "cluster.yaml")),
                        help="an inventory (cluster.yaml) or a job (job.yaml), or a folder holding one (the job first)")
    parser.add_argument("--port", type=int, default=None, help="the rendezvous port that must be free, with the next one "
                        "(default: the job's rdzv_port, or 29500)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def check(args: argparse.Namespace) -> int:
    from ..hosts.check import check_cluster, check_job
    from ..spec import select_hosts
    from ..spec.yamlfile import load_mapping

    if args.port is not None and not 1 <= args.port <= 65534:  # and port + 1, the node supervisors'
        raise SpecError(f"--port: expected an integer from 1 to 65534, got {args.port}")
    problems: list[str] = []
    slurm = _slurm_check(args)
    if slurm is not None:
        return slurm
    if "command" in load_mapping(args.cluster, str(args.cluster)):  # a job: check it as a launch would need
        job = load_job(args.cluster)
        hosts = select_hosts(job, resolve_cluster(job, argparse.Namespace(local=False, cluster=None)))
        port = args.port or job.rdzv_port or 29500
        results, problems = check_job(job, hosts, port, sys.executable, port_fixed=bool(args.port or job.rdzv_port))
    else:
        results = check_cluster(load_cluster(args.cluster), args.port or 29500, port_given=args.port is not None)
    for result in results:
        print(result.line())
    for problem in problems:
        print(f"job: NOT READY: {problem}")
    usable = sum(r.ok for r in results)
    print(f"{usable} of {len(results)} host(s) usable" + ("; the job is not ready" if problems else ""))
    return 0 if usable == len(results) and not problems else 1


def _slurm_check(args: argparse.Namespace) -> int | None:
    """`launch check` of a Slurm inventory (or of a job that uses one): its exit code; None for a
    lab's inventory."""
    from ..spec.yamlfile import load_mapping

    runtime = None
    if "command" in load_mapping(args.cluster, str(args.cluster)):
        job = load_job(args.cluster)
        cluster, runtime = resolve_cluster(job, argparse.Namespace(local=False, cluster=None)), job.runtime
    else:
        cluster = load_cluster(args.cluster)
    if cluster.slurm is None:
        return None
    from ..backends.slurmcheck import check_slurm

    results = check_slurm(cluster.slurm, runtime)
    for result in results:
        print(result.line(), flush=True)
    usable = all(r.ok for r in results)
    print("the Slurm cluster is usable" if usable else "the Slurm cluster is not usable as the inventory says")
    return 0 if usable else 1


def report_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="launch report", allow_abbrev=False, description="Compare runs of one job across node counts.")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (or run ids under ./runs)")
    parser.add_argument("--out", type=Path, help="where scaling.json/.md/.png go (default: the runs' common folder)")
    existing_run_flags(parser)
    return parser


def report(args: argparse.Namespace) -> int:
    from ..results.runplot import FILE, plot_path, write_steps_plot
    from ..run.existing import find_run

    # a folder as given (it must hold summary.json), else a run id under --runs-dir
    runs = [run if run.is_dir() else find_run(run, args.runs_dir) for run in args.runs]
    summaries = load_summaries(runs)
    if len(summaries) > 1:
        out = args.out or Path(os.path.commonpath([str(run.resolve().parent) for run in runs]))
        rows = write_scaling(out, summaries)
        print(markdown(rows, next(iter(summaries.values()))["job"]))
        print(f"launch: scaling results in {out}: {', '.join(FILES)}")
    else:  # a table of one run compares nothing
        print("launch: one run: no scaling table (it compares two runs or more)")
    for label, summary in summaries.items():
        path = plot_path(Path(label), summary, args.out)
        if write_steps_plot(Path(label), summary, path):
            print(f"launch: steps of run {summary.get('run_id')}: {path}")
        else:
            print(f"launch: run {summary.get('run_id')} has no step metrics: no {FILE} made")
    return 0
