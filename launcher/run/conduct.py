"""Conducting runs: one run of a job (get its backend's machines ready and plan it, submit it, then
follow it attached or leave it detached, and finish it), and a sweep of runs across node counts.
The command line parses arguments and calls these."""

from __future__ import annotations

import dataclasses
import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console as RichConsole

from ..backends.base import Backend
from ..backends.choose import record
from ..backends.local import LocalBackend
from ..errors import LaunchError, SpecError
from ..hosts.ports import free_port_pair
from ..image.build import CACHE, PACKAGE, image_tag
from ..plan import PlanOptions, check_hosts
from ..record import rundir
from ..record.outcome import Phases, RunOutcome, RunState, exit_code_of
from ..results.scaling import FILES, STANDS_FOR_NODES, markdown, write_scaling
from ..results.summary import render
from ..spec import ClusterSpec, Host, JobSpec, select_hosts
from ..sync.manifest import Manifest, link_warning, scan, size_warning
from .attach import Attached, Interrupt
from .console import Console
from .finish import finish
from .resume import LATEST, ResumeSource, find_source


@dataclass(frozen=True)
class RunRequest:
    """How the user asked for a run, beyond the job and the inventory."""

    runs_dir: Path
    nodes: int | None = None
    nodes_label: str | None = None  # what to name in an error about `nodes` (--nodes, scaling)
    dry_run: bool = False
    detach: bool = False  # start every node in the background and return
    resume: str | None = None  # start from an earlier run's checkpoints and outputs: a run, or resume.LATEST
    debug: bool = False  # print tracebacks
    verbose: bool = False  # torchrun's own lines on the console too
    top_runs_dir: Path | None = None  # a sweep's runs folder, which holds runs_dir (the sweep's own)


def run_once(job: JobSpec, cluster: ClusterSpec, request: RunRequest) -> tuple[int, dict | None]:
    """One run of the job: its exit code and summary (None for a dry run or a detached run)."""
    hosts = select_hosts(job, cluster, request.nodes, request.nodes_label)
    secrets = _secrets(job)
    remote = any(not h.is_local for h in hosts)
    if remote and cluster.slurm is None:  # Slurm's nodes are the scheduler's to reach
        from ..hosts.chain import idle_s
        from ..hosts.ssh import as_ssh_reaches
        from ..image.squeeze import mode

        idle_s()  # LAUNCH_RELAY_IDLE_S and LAUNCH_IMAGE_COMPRESSION are checked before anything is made or sent
        mode()
        hosts = as_ssh_reaches(hosts)
    paths = rundir.new_run_paths(request.runs_dir, job.name)
    source = _resume_source(job, hosts, request)
    # what runs leave in the runs folder (a sweep's: the one above it) is never code
    manifest = scan(job.workdir, CACHE, skip=(request.top_runs_dir or request.runs_dir,))
    for warning in (size_warning(job.workdir, manifest), link_warning(job.workdir, manifest)):
        if warning:
            print(f"launch: {warning}", file=sys.stderr, flush=True)
    options = _options(job, paths, request, remote, source, manifest)
    backend = _backend(cluster, hosts, paths)
    try:
        if request.dry_run:
            print(backend.describe(job, hosts, paths.run_id, options, manifest), end="")
            return 0, None
        console, phases = Console(), Phases()
        plan = backend.prepare(job, hosts, paths.run_id, options, manifest, console.say, phases)
        plan = dataclasses.replace(plan, workdir_hash=manifest.digest)
        _write_inputs(job, cluster, paths, plan, manifest, backend)
        if source:
            console.say(_resuming(source))
        if request.detach:
            return _detached(plan, backend, paths, secrets, console, request), None
        console.say(f"launch: run {plan.run_id} on {plan.nnodes} node(s); run directory {paths.root}")
        return _attached(job, plan, backend, paths, secrets, console, phases, request)
    finally:
        backend.close()  # after the summary is shown: old copies' removal may still be under way


def _attached(job: JobSpec, plan, backend: Backend, paths: rundir.RunPaths, secrets: dict[str, str], console: Console,
              phases: Phases, request: RunRequest) -> tuple[int, dict]:
    """Run the plan attached: follow it to its end, stop it, finish it, show its summary. Stop
    signals only mark the run stopped until it is finished (its files collected, its summary written)."""
    attached = Attached(plan, backend, paths, console, hang_warning_s=job.hang_warning_s, verbose=request.verbose)
    with Interrupt().installed() as interrupt:
        try:
            outcome = attached.run(secrets, phases, interrupt)
            summary = finish(paths, plan, backend, outcome, console.say, attached.unreachable, phases)
        finally:
            attached.release()
    _show(summary, outcome, paths, request.debug)
    return exit_code_of(summary.get("status", outcome.status)), summary


def _backend(cluster: ClusterSpec, hosts: tuple[Host, ...], paths: rundir.RunPaths) -> Backend:
    """A Slurm cluster, lab hosts over SSH, or this machine."""
    if cluster.slurm is not None:
        from ..backends.slurm import SlurmBackend

        return SlurmBackend(cluster.slurm, paths)
    if any(not h.is_local for h in hosts):
        from ..backends.ssh import SshBackend  # SSH and Docker libraries: only for lab runs

        return SshBackend({h.name: h for h in hosts}, paths, paths.run_id)
    return LocalBackend()


def _resume_source(job: JobSpec, hosts: tuple[Host, ...], request: RunRequest) -> ResumeSource | None:
    which = request.resume or (LATEST if job.resume else None)
    source = find_source(request.runs_dir, job.name, [h.name for h in hosts], which) if which else None
    if which and source is None:
        print(f"launch: {'--resume' if request.resume else f'{job.path}: resume'}: no earlier run of job '{job.name}' in "
              f"{request.runs_dir} kept checkpoints or outputs on these hosts; starting fresh", file=sys.stderr, flush=True)
    return source


def _options(job: JobSpec, paths: rundir.RunPaths, request: RunRequest, remote: bool, source: ResumeSource | None,
             manifest: Manifest) -> PlanOptions:
    return PlanOptions(
        run_dir=str(paths.root),
        local_python=sys.executable,
        local_cpus=os.cpu_count() or 1,
        image=image_tag(job) if remote and job.runtime == "docker" else None,
        local_user=getpass.getuser(),
        detach=request.detach,
        local_jobs=str(request.runs_dir.resolve() / rundir.JOBS_FOLDER),
        resume_from=source.run_id if source else None,
        resume_dirs=dict(source.folders) if source else {},
        code_list=str(paths.workdir_file),
        workdir_hash=manifest.hash if remote else None,
        rdzv_port=None if remote or job.rdzv_port else free_port_pair(),  # a dry run shows the pair a run would take now
        local_lib=str(PACKAGE.parent),
    )


def _write_inputs(job: JobSpec, cluster: ClusterSpec, paths: rundir.RunPaths, plan, manifest: Manifest,
                  backend: Backend) -> None:
    """The run directory, with what the run was made from: the user's files, the plan, the code's
    record, and which backend runs it."""
    rundir.create(paths)
    rundir.copy_input(job.path, paths.job_file)
    rundir.copy_input(cluster.path, paths.cluster_file, fallback_text=_local_inventory_text(cluster) if cluster.path is None else None)
    rundir.write_json(paths.plan_file, plan.to_json())
    rundir.write_json(paths.workdir_file, {"workdir": str(job.workdir), **manifest.to_json()})
    record(paths, backend)


def _detached(plan, backend: Backend, paths: rundir.RunPaths, secrets: dict[str, str], console: Console,
              request: RunRequest) -> int:
    """Start every node in the background and say how to find the run again."""
    try:
        backend.submit(plan, secrets, attached=False)
    except LaunchError as exc:
        finish(paths, plan, backend, RunOutcome(RunState.FAILED, reason=str(exc)), console.say)
        raise
    print(f"launch: run {plan.run_id} started on {plan.nnodes} node(s), detached; run directory {paths.root}\n"
          f"  launch status {plan.run_id}   launch logs {plan.run_id} --follow   launch stop {plan.run_id}"
          + (f"   (add --runs-dir {request.runs_dir})" if request.runs_dir != Path("runs") else ""), flush=True)
    return 0


def _show(summary: dict, outcome: RunOutcome, paths: rundir.RunPaths, debug: bool) -> None:
    """The summary on the terminal (and where an unexpected error's traceback is); a terminal that
    is gone does not stop it."""
    if outcome.unexpected and debug:
        print(outcome.unexpected, file=sys.stderr, end="", flush=True)
    try:
        render(summary, RichConsole(highlight=False, soft_wrap=True))
        if outcome.unexpected:
            print(f"launch: the launcher hit an unexpected error; every node was stopped; the traceback is in {paths.error_file}"
                  + ("" if debug else " (--debug prints it)"), file=sys.stderr, flush=True)
    except OSError:  # the terminal is gone (SIGHUP): summary.json has it all
        pass


def _resuming(source: ResumeSource) -> str:
    """The console's line about the run a run starts from."""
    kept = [f"{host}: {kinds.get('checkpoints', 0)} checkpoint file(s), {kinds.get('work', 0)} output file(s)"
            for host, kinds in source.kept.items()]
    return (f"launch: resuming from run {source.run_id}: its checkpoints and outputs are copied into this run's own folders"
            + (f" ({'; '.join(kept)})" if kept else ""))


def _secrets(job: JobSpec) -> dict[str, str]:
    """The job's secrets from the launcher's environment; SpecError when one is missing or unusable."""
    missing = [name for name in job.secrets if name not in os.environ]
    if missing:
        raise SpecError(f"{job.path}: secrets: {missing[0]} is not set in the launcher's environment")
    secrets = {name: os.environ[name] for name in job.secrets}
    multiline = [name for name, value in secrets.items() if "\n" in value]
    if multiline:
        raise SpecError(f"{job.path}: secrets: the value of {multiline[0]} has a line break; secrets must be one line")
    return secrets


def _local_inventory_text(cluster: ClusterSpec) -> str:
    host = cluster.hosts[0]
    return f"# --local: this machine\nhosts:\n  - name: {host.name}\n    address: local\n    gpus: {host.gpus}\n    slots: {host.slots}\n"


def on_one_box(job: JobSpec, nodes: int | None, quiet: bool = False) -> JobSpec:
    """--local takes every job: its nodes' processes all run on this machine, as one node."""
    count = nodes if nodes is not None else job.nodes
    if count is not None and count < 1:
        raise SpecError(f"--nodes: expected a positive integer, got {count}")
    if count is None or count == 1:
        return dataclasses.replace(job, nodes=None)
    if isinstance(job.nproc_per_node, int):
        if not quiet:
            print(f"launch: --local: the job's {count} nodes x {job.nproc_per_node} process(es) run as "
                  f"{count * job.nproc_per_node} processes on this machine", file=sys.stderr, flush=True)
        return dataclasses.replace(job, nodes=None, nproc_per_node=count * job.nproc_per_node)
    if not quiet:
        print(f"launch: --local: the job's {count} nodes run as one node on this machine", file=sys.stderr, flush=True)
    return dataclasses.replace(job, nodes=None)


def _rewrite_summary(root: Path, summary: dict) -> None:
    try:
        rundir.write_json(rundir.RunPaths(root).summary_file, summary)
    except LaunchError as exc:
        print(f"launch: {exc}", file=sys.stderr)


def sweep(job: JobSpec, cluster: ClusterSpec, request: RunRequest, local: bool = False) -> int:
    """The job at every node count of `scaling`, then scaling.json/.md/.png beside those runs; each
    run as `request` asks (its dry_run, debug, verbose), in a folder of the sweep under its runs_dir.
    `local`: each count N runs on this machine as one node of N x nproc_per_node processes, and
    counts as N nodes in the comparison."""
    runs_dir, dry_run = request.runs_dir, request.dry_run
    if not job.scaling:
        raise SpecError(f"{job.path}: scaling: --sweep needs node counts, e.g. scaling: [1, 2, 3]")
    if local and not isinstance(job.nproc_per_node, int):
        raise SpecError(f"{job.path}: nproc_per_node: --sweep --local runs N nodes as N x nproc_per_node processes here, "
                        "so it needs an integer, not auto")
    if job.resume:  # a count must not start from the checkpoints of the count before it
        print(f"launch: {job.path}: resume: true is left out of a sweep: every node count starts from the beginning",
              file=sys.stderr, flush=True)
        job = dataclasses.replace(job, resume=False)
    label = f"{job.path}: scaling"
    for count in job.scaling:  # every count is checked before the first run starts
        if local:
            select_hosts(on_one_box(job, count, quiet=True), cluster, None, label)
        else:
            check_hosts(job, select_hosts(job, cluster, count, label))
    sweep_dir = runs_dir.resolve() / rundir.new_run_id(f"{job.name}-sweep")
    summaries: dict[str, dict] = {}
    code = 0
    for count in job.scaling:
        if not dry_run:
            print(f"launch: sweep {sweep_dir.name}: {count} node(s)", flush=True)
        each = dataclasses.replace(request, runs_dir=sweep_dir, nodes=None if local else count, nodes_label=label,
                                   top_runs_dir=runs_dir)
        try:
            code, summary = run_once(on_one_box(job, count) if local else job, cluster, each)
        except LaunchError as exc:  # keep what the finished counts measured
            print(f"launch: error: {exc}", file=sys.stderr)
            code, summary = exc.exit_code, None
        if summary is not None and local:  # on one box, a count compares as the nodes it stands for
            summary = {**summary, STANDS_FOR_NODES: count}
            _rewrite_summary(sweep_dir / summary["run_id"], summary)
        if summary is not None and code == 0:
            summaries[str(sweep_dir / summary["run_id"])] = summary
        if code != 0:
            print(f"launch: sweep stopped: the run at {count} node(s) ended with exit code {code}", file=sys.stderr)
            break
    if summaries:
        rows = write_scaling(sweep_dir, summaries)
        print(markdown(rows, job.name))
        if local:
            print(f"launch: --local: each node count N ran on this machine as one node of N x {job.nproc_per_node} process(es)")
        print(f"launch: scaling results in {sweep_dir}: {', '.join(FILES)}")
    return code
