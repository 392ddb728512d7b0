"""`launch`: the command line (DESIGN.md): arguments in, a run (launcher.run.conduct) or a report out."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, LaunchError, SpecError
from .results.scaling import FILES, load_summaries, markdown, write_scaling
from .run.conduct import RunRequest, on_one_box, run_once, sweep
from . import __version__
from .spec import MAX_NPROC_PER_NODE, ClusterSpec, JobSpec, check_env_name, load_cluster, load_job, local_cluster
from .spec.fields import suggest

COMMANDS = ("check", "status", "logs", "stop", "report", "runs", "rm", "prune")
GLOBAL_FLAGS = {"--debug": 0, "--runs-dir": 1}  # taken before or after a command's name; how many values each takes
EXIT_CODES = ("exit codes: 0 the run succeeded (or the command did its work); 1 the run failed, was stopped or could "
              "not be carried out; 2 bad input (nothing was started); 130 interrupted (Ctrl-C, SIGTERM, the terminal closed)")
EXAMPLES = """examples:
  launch jobs/resnet18-cifar10/job.yaml --local            every process on this machine
  launch job.yaml --nodes 2 --env LR=0.1 -- --epochs 3     2 hosts, one more variable, arguments for the command
  launch job.yaml --detach; launch logs RUN --follow       a run that outlives this terminal
  launch check cluster.yaml                                preflight every host"""


def main(argv: list[str] | None = None) -> int:
    argv = _command_first(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    for sig in (signal.SIGTERM, signal.SIGHUP):  # outside a run's watch loop these end like Ctrl-C
        signal.signal(sig, _sigterm)
    try:
        if argv[:1] == ["--version"]:
            print(f"launch {__version__}")
            return 0
        command = argv[0] if argv else None
        if command == "logs":
            return _logs(_logs_parser().parse_args(argv[1:]))
        if command == "report":
            return _report(_report_parser().parse_args(argv[1:]))
        if command == "check":
            return _check(_check_parser().parse_args(argv[1:]))
        if command == "status":
            return _status(_status_parser().parse_args(argv[1:]))
        if command == "stop":
            return _stop(_stop_parser().parse_args(argv[1:]))
        if command == "runs":
            return _runs(_runs_parser().parse_args(argv[1:]))
        if command == "rm":
            return _rm(_rm_parser().parse_args(argv[1:]))
        if command == "prune":
            return _prune(_prune_parser().parse_args(argv[1:]))
        _not_a_mistyped_command(argv)
        return run_job(_run_parser().parse_args(_split_extra(argv)[0]), _split_extra(argv)[1])
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
    except Exception as exc:  # noqa: BLE001 - the safety net: one line, the traceback kept in a file
        return _unexpected(exc, debug)


def _unexpected(exc: Exception, debug: bool) -> int:
    """An error the launcher did not expect, in one line that says where its traceback is: the
    launcher-error.txt of the run directory this launch made, while that run has not ended (an error
    while deploying or writing its inputs; `execute` keeps its own), else ~/.cache/launch/last-error.txt."""
    from .image.wheels import CACHE
    from .run import rundir

    text = traceback.format_exc()
    if debug:
        print(text, file=sys.stderr, end="")
    places = [CACHE / "last-error.txt"]
    if rundir.MADE and not rundir.MADE[-1].summary_file.exists():  # the run had not ended: the error is its own
        places.insert(0, rundir.MADE[-1].error_file)
    kept = ""
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            place.write_text(text)
        except OSError:
            continue
        kept = f"; the traceback is in {place}"
        break
    message = " ".join(str(exc).split()).encode("utf-8", "backslashreplace").decode()  # one line, whatever it holds
    print(f"launch: unexpected error: {type(exc).__name__}: {message}{kept}" + ("" if debug else " (--debug prints it)"),
          file=sys.stderr)
    return EXIT_FAILED


def _command_first(argv: list[str]) -> list[str]:
    """`launch --debug logs RUN` as `launch logs RUN --debug`: global flags may come first."""
    lead = 0
    while lead < len(argv) and (argv[lead] in GLOBAL_FLAGS or argv[lead].split("=", 1)[0] in GLOBAL_FLAGS):
        lead += 1 + (GLOBAL_FLAGS.get(argv[lead], 0) if "=" not in argv[lead] else 0)
    if lead and lead < len(argv) and argv[lead] in COMMANDS:
        return [argv[lead], *argv[lead + 1:], *argv[:lead]]
    return argv


def _not_a_mistyped_command(argv: list[str]) -> None:
    """`launch stauts` is a mistyped command, not a job file that is missing."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first and not Path(first).exists() and not first.endswith((".yaml", ".yml")):
        close = suggest(first, list(COMMANDS))
        if close:
            raise SpecError(f"unknown command '{first}'; did you mean '{close}'? (commands: {', '.join(COMMANDS)}, or a job file)")


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """The launcher's arguments, and what follows `--` (appended to the job's command)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


class _Parser(argparse.ArgumentParser):
    """A command's parser (built with allow_abbrev=False, so `--dry` is not `--dry-run`) that refuses an
    unknown option in one line naming the option it most likely meant."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        given = list(sys.argv[1:] if args is None else args)
        for arg in given[: given.index("--") if "--" in given else len(given)]:  # after `--`: arguments
            name = arg.split("=", 1)[0]
            if self._unknown_option(name):
                close = suggest(name, [o for o in self._option_string_actions if o.startswith("--")])
                hint = f"did you mean '{close}'?" if close else f"{self.prog} --help lists the options"
                raise SpecError(f"unknown option '{name}'; {hint}")
        return super().parse_args(given, namespace)

    def _unknown_option(self, name: str) -> bool:
        if not name.startswith("-") or name == "-" or name in self._option_string_actions:
            return False
        if name[1:].replace(".", "", 1).isdigit():  # a negative number: a value (`--rank -1`)
            return False
        return name.startswith("--") or name[:2] not in self._option_string_actions  # `-vv`: short flags run together


def _run_parser() -> argparse.ArgumentParser:
    from .spec.yamlfile import file_in_folder

    parser = _Parser(
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


def _check_parser() -> argparse.ArgumentParser:
    from .spec.yamlfile import file_in_folder

    parser = _Parser(prog="launch check", allow_abbrev=False, description="Preflight every host of an inventory, or every "
                     "host a job would use as the job needs it (its base image here, a python with the "
                     "same torch on runtime: host hosts, GPUs for its processes, the rendezvous port).")
    parser.add_argument("cluster", type=lambda given: file_in_folder(given, ("job.yaml", "cluster.yaml")),
                        help="an inventory (cluster.yaml) or a job (job.yaml), or a folder holding one (the job first)")
    parser.add_argument("--port", type=int, default=None, help="the rendezvous port that must be free, with the next one "
                        "(default: the job's rdzv_port, or 29500)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _check(args: argparse.Namespace) -> int:
    from .hosts.check import check_cluster, check_job
    from .spec import select_hosts
    from .spec.yamlfile import load_mapping

    if args.port is not None and not 1 <= args.port <= 65534:  # and port + 1, the node supervisors'
        raise SpecError(f"--port: expected an integer from 1 to 65534, got {args.port}")
    problems: list[str] = []
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


def _report_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="launch report", allow_abbrev=False, description="Compare runs of one job across node counts.")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (or run ids under ./runs)")
    parser.add_argument("--out", type=Path, help="where scaling.json/.md/.png go (default: the runs' common folder)")
    _existing_run_flags(parser)
    return parser


def _report(args: argparse.Namespace) -> int:
    from .results.runplot import FILE, plot_path, write_steps_plot
    from .run.existing import find_run

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


def _logs_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="launch logs", allow_abbrev=False, description="Print the logs of a run, prefixed [host/rank].")
    parser.add_argument("run", type=Path, help="a run directory, or a run id under --runs-dir")
    parser.add_argument("--rank", type=int, help="only this global rank")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="print lines as they come, from every host, until the run ends (exit 0 when it succeeded)")
    _existing_run_flags(parser)
    return parser


def _existing_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command about existing runs; its parser made strict as `_Parser` is, whichever
    class built it."""
    parser.__class__, parser.allow_abbrev = _Parser, False
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run ids are looked up (default: ./runs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _logs(args: argparse.Namespace) -> int:
    from .run import existing
    from .run.terminal import SafeOut

    run = existing.open_run(existing.find_run(args.run, args.runs_dir))
    if args.rank is not None and run.plan.world_size is not None and not 0 <= args.rank < run.plan.world_size:
        run.close()
        raise SpecError(f"--rank: {args.rank} is not a rank of run {run.plan.run_id}; its ranks are 0 to {run.plan.world_size - 1}")
    out = SafeOut(sys.stdout.buffer)
    shown: dict[tuple[str, int], int] = {}  # lines printed per (host, rank), not printed twice
    try:
        if run.summary is None and run.watched():  # its attached launcher is on it: its files fill here
            if not args.follow:
                existing.print_local_logs(run.paths, args.rank, out)
                return 0
            if existing.follow_watched(run, args.rank, out, shown):
                return existing.exit_code(run.summary or {})
            existing.stderr_say("launch: the run's launcher stopped watching it (killed, or cut off); following its hosts")
        if run.summary is None and args.follow:
            return existing.exit_code(existing.follow(run, args.rank, out, existing.stderr_say, shown))
        existing.describe(run)  # finishes a run that has ended, and collects what a lost host kept
        if run.summary is None:  # still running: what the hosts have so far
            for node in run.plan.nodes:
                for line in existing.output_lines(run, node):
                    existing.show_line(line, node.host, args.rank, out, lambda _text: None)
            out.flush()
            return 0
        existing.print_local_logs(run.paths, args.rank, out)
        return existing.exit_code(run.summary) if args.follow else 0
    finally:
        run.close()


def _status_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="launch status", allow_abbrev=False, description="The state of runs, per host (asked of the hosts).")
    parser.add_argument("runs", type=Path, nargs="*", help="run directories or run ids (default: every run under --runs-dir)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    _existing_run_flags(parser)
    return parser


def _status(args: argparse.Namespace) -> int:
    from .run import existing
    from .run.status import duration

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


def _stop_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="launch stop", allow_abbrev=False, description="Stop every host's part of a run "
                     "(SIGTERM, then kill after the grace period) and collect its logs.")
    parser.add_argument("run", type=Path, help="a run directory, or a run id under --runs-dir")
    _existing_run_flags(parser)
    return parser


def _stop(args: argparse.Namespace) -> int:
    from .run import existing

    run = existing.open_run(existing.find_run(args.run, args.runs_dir))
    try:
        if run.summary is not None:
            print(f"launch: run {run.plan.run_id} has ended already ({run.summary['status']})")
            return 0
        watched = run.watched()
        summary = existing.stop(run) if not watched else None
        if watched:  # its launcher collects and summarises
            existing.stop_nodes(run)
        print(f"launch: stopped run {run.plan.run_id}" + (f" ({summary['status']}); logs in {run.paths.root}" if summary else ""))
        return 0
    finally:
        run.close()


def _runs_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch runs", description="List runs, newest first, from their run directories "
                                     "(launch status asks the hosts of runs that have not ended).")
    parser.add_argument("--job", help="only the runs of this job")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    _existing_run_flags(parser)
    return parser


def _runs(args: argparse.Namespace) -> int:
    from .run.housekeeping import rows
    from .run.status import duration

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


def _rm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch rm", description="Remove runs that have ended: their run directories, and "
                                     "with --checkpoints their checkpoints and outputs on every host. Each removal is said.")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories, or run ids under --runs-dir")
    parser.add_argument("--checkpoints", action="store_true", help="also remove each run's own folder on its hosts "
                        "(its checkpoints and the files its ranks wrote); without it they stay")
    _existing_run_flags(parser)
    return parser


def _rm(args: argparse.Namespace) -> int:
    from .run.existing import find_run
    from .run.housekeeping import remove

    roots = [find_run(run, args.runs_dir) for run in args.runs]  # every name checked before anything goes
    failed = 0
    for root in roots:
        try:
            remove(root, args.checkpoints, print)
        except (LaunchError, OSError) as exc:  # said, and the other runs go on
            print(f"launch: error: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_FAILED if failed else 0


def _prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch prune", description="Remove the ended runs of each job beyond the newest "
                                     "KEEP, as launch rm does. Runs still going are never counted or removed.")
    parser.add_argument("--keep", type=int, required=True, help="how many ended runs of each job to keep (newest first)")
    parser.add_argument("--job", help="only the runs of this job")
    parser.add_argument("--checkpoints", action="store_true", help="also remove those runs' checkpoints and outputs on their hosts")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    _existing_run_flags(parser)
    return parser


def _prune(args: argparse.Namespace) -> int:
    from .run.housekeeping import remove, rows, to_prune

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
