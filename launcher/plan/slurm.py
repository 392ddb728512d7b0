"""A run on a Slurm cluster, planned: how each node's part is started there (`node_prefix`), and the
one sbatch script that runs them all (`batch_script`), kept in the run's folder, readable, and
submittable again by hand (README: "Slurm clusters").

The nodes are Slurm's to choose, so a plan made before the submission cannot know their addresses
or a free port: the plan holds placeholders (`{launch.node0}`, `{launch.rdzv_port}`), which the script turns into
variables that its first lines set from the allocation (`scontrol show hostnames`, the job id).
Pure: no file is read or written here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from typing import TYPE_CHECKING

from ..node import contract
from .command import RANK_WRAPPER_MODULE
from .container import docker_run, mounts
from .layout import CONTAINER_RUN_DIR, CONTAINER_WORKDIR, NodeLayout
from .model import PREEMPT_SIGNAL, LaunchPlan, NodeKind, PlanOptions

if TYPE_CHECKING:
    from ..spec import Host, JobSpec, SlurmSpec

PORT_BASE = 20000  # rendezvous ports: PORT_BASE + 2 * (job id % PORT_PAIRS), the supervisors' the one after
PORT_PAIRS = 10000
LEASE_STALE_S = 30  # a job whose attached launcher has not renewed its lease for this long does not start
PREEMPT_GRACE_S = 60  # Slurm's warning comes this long before the time limit (at most half the timeout)
IMAGE_SUFFIX = {"docker": ".tar", "apptainer": ".sif", "pyxis": ".sqsh"}
_PLACEHOLDER = re.compile(r"\{launch\.(node(\d+)|rdzv_port|supervisors_port|nic)\}")
NODE_NIC = "{launch.nic}"  # the interface a node reaches the first node by, found on the node (inventory without `nic`)
_VARIABLES = {"{launch.rdzv_port}": "LAUNCH_RDZV_PORT", "{launch.supervisors_port}": "LAUNCH_SUPERVISORS_PORT",
              NODE_NIC: "LAUNCH_NIC"}


def image_file(shared_dir: str, image_id: str, container: str) -> str:
    """The job's image where the nodes find it, named by its content: a `docker save` archive, or what
    apptainer and pyxis run (a .sif, a squashfs) made from it once."""
    return f"{shared_dir}/images/{image_id.split(':')[-1]}{IMAGE_SUFFIX[container]}"


def node_prefix(host: "Host", run_id: str, name: str | None, where: NodeLayout, env: dict[str, str],
                options: PlanOptions) -> list[str]:
    """What comes before a Slurm node's command (the supervisor): the container it runs in, or for
    runtime: host, `env` setting the ranks' variables. Under pyxis the container is srun's to start
    (`srun_options`); the node's command then runs in it as under runtime: host."""
    if where.kind is NodeKind.CONTAINER and options.container == "docker":
        assert name is not None  # in the foreground: the job's step lasts as long as the container
        return docker_run(host, run_id, name, mounts(where), env, dataclasses.replace(options, detach=False))
    if where.kind is NodeKind.CONTAINER and options.container == "apptainer":
        binds = ",".join(f"{source}:{target}" for source, target in mounts(where).items())
        argv = ["apptainer", "exec", "--cleanenv", "--bind", binds, "--pwd", CONTAINER_WORKDIR]
        argv += ["--nv"] if host.gpus else []
        for key, value in sorted(env.items()):
            argv += ["--env", f"{key}={value}"]
        assert options.image_file is not None
        return argv + [options.image_file]
    return ["env", *(f"{key}={value}" for key, value in sorted(env.items()))]


def srun_options(plan: LaunchPlan, slurm: "SlurmSpec", options: PlanOptions, where: NodeLayout, run_folder: str) -> list[str]:
    """srun's arguments: one task per node on every node, the whole step ended when one task fails;
    under pyxis, the container each task runs in."""
    argv = [f"--nodes={plan.nnodes}", f"--ntasks={plan.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            # what a node prints before its supervisor starts (a failed image load) goes where the supervisor writes
            # (%n: the node's index in the job, as its folder's name says it: node<k>)
            f"--output={run_folder}/node%n/{contract.LOGS}/node%n/{contract.NODE_OUTPUT}", "--open-mode=append"]
    if slurm.cpus_per_node:
        argv.append(f"--cpus-per-task={slurm.cpus_per_node}")
    if where.kind is NodeKind.CONTAINER and options.container == "pyxis":
        volumes = ",".join(f"{source}:{target}" for source, target in mounts(where).items())
        argv += [f"--container-image={options.image_file}", f"--container-mounts={volumes}",
                 f"--container-workdir={CONTAINER_WORKDIR}"]
    return argv


def batch_script(plan: LaunchPlan, job: "JobSpec", slurm: "SlurmSpec", options: PlanOptions, where: NodeLayout,
                 run_folder: str) -> str:
    """The sbatch script of the run: its #SBATCH header, the allocation's addresses and port, the
    lease check of an attached run, and one srun of every node's part."""
    lines = ["#!/bin/bash",
             f"# launch: run {plan.run_id} of job '{job.name}', {plan.nnodes} node(s), written by launch.",
             f"# Submit it again by hand with: sbatch {shlex.quote(f'{run_folder}/job.sbatch')}"]
    lines += [f"#SBATCH {option}" for option in sbatch_options(plan, job, slurm, run_folder)]
    lines += ["", "set -u", f"run={shlex.quote(run_folder)}", "", *_lease_check(plan), *_restarts_check(plan), "",
              *_allocation(plan), ""]
    lines += _node_part(plan, job, slurm, options)
    srun = shlex.join(["srun", *srun_options(plan, slurm, options, where, run_folder), "bash", "-c"])
    lines += [
        "",
        f"# {PREEMPT_SIGNAL} comes before the time limit (and from a preemption): every node passes it to its ranks",
        f"trap 'scancel --signal={PREEMPT_SIGNAL[3:]} \"$SLURM_JOB_ID\"' {PREEMPT_SIGNAL[3:]}",
        f'{srun} "$node_part" &',
        "step=$!",
        'while :; do wait "$step"; code=$?; kill -0 "$step" 2>/dev/null || break; done',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def sbatch_options(plan: LaunchPlan, job: "JobSpec", slurm: "SlurmSpec", run_folder: str) -> list[str]:
    """The #SBATCH lines, from job.yaml and the inventory; the inventory's sbatch_args last, as given."""
    options = [f"--job-name={job.name}", f"--nodes={plan.nnodes}", "--ntasks-per-node=1"]
    if slurm.cpus_per_node:
        options.append(f"--cpus-per-task={slurm.cpus_per_node}")
    if slurm.gpus_per_node:
        options.append(f"--gpus-per-node={slurm.gpus_per_node}")
    if slurm.partition:
        options.append(f"--partition={slurm.partition}")
    if slurm.account:
        options.append(f"--account={slurm.account}")
    if job.timeout_s is not None:
        options.append(f"--time={time_limit(job.timeout_s)}")
        options.append(f"--signal=B:{PREEMPT_SIGNAL[3:]}@{preempt_grace(job.timeout_s)}")
    else:
        options.append(f"--signal=B:{PREEMPT_SIGNAL[3:]}@{PREEMPT_GRACE_S}")
    # in the shared folder: the folder sbatch was called from may exist only on the login side
    options += [f"--chdir={run_folder}", f"--output={run_folder}/slurm-%j.out", "--open-mode=append"]
    options.append("--requeue" if job.max_restarts else "--no-requeue")
    return options + _grouped(slurm.sbatch_args)


def time_limit(seconds: float) -> str:
    """Slurm's --time for a timeout: minutes:seconds, rounded up to whole seconds."""
    whole = max(1, math.ceil(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def preempt_grace(timeout_s: float) -> int:
    """How long before the time limit the ranks are warned: a minute, at most half the timeout."""
    return max(1, min(PREEMPT_GRACE_S, int(timeout_s // 2)))


def _grouped(args: tuple[str, ...]) -> list[str]:
    """sbatch_args as #SBATCH lines: an option with its value given as the next item stays on one line."""
    grouped: list[str] = []
    for arg in args:
        if grouped and not arg.startswith("-"):
            grouped[-1] += " " + shlex.quote(arg)
        else:
            grouped.append(shlex.quote(arg))
    return grouped


def _lease_check(plan: LaunchPlan) -> list[str]:
    """An attached launcher (which sets LAUNCH_LEASE_S) renews its nodes' leases from the submission
    on: a job that starts after it died does not run."""
    lease = f'"$run/{plan.nodes[0].host}/{contract.LEASE_FILE}"'
    return [
        "# an attached launcher renews this lease; a job whose launcher is gone does not start",
        'if [ -n "${LAUNCH_LEASE_S:-}" ]; then',
        f"    age=$(( $(date +%s) - $(stat -c %Y {lease} 2>/dev/null || echo 0) ))",
        f'    if [ "$age" -gt {LEASE_STALE_S} ]; then',
        f'        echo "launch: the launcher of run {plan.run_id} has not renewed its lease for $age s; not starting" >&2',
        "        exit 1",
        "    fi",
        "fi",
    ]


def _restarts_check(plan: LaunchPlan) -> list[str]:
    """A job Slurm requeues (max_restarts > 0: --requeue) runs again at most max_restarts times."""
    if not plan.max_restarts:
        return []
    return [
        f'if [ "${{SLURM_RESTART_COUNT:-0}}" -gt {plan.max_restarts} ]; then',
        f'    echo "launch: run {plan.run_id} was requeued more than max_restarts ({plan.max_restarts}) times; not starting" >&2',
        "    exit 1",
        "fi",
    ]


def _allocation(plan: LaunchPlan) -> list[str]:
    """Each node's address (LAUNCH_ADDR_<k>, in the order of SLURM_NODEID), the rendezvous port from
    the job id, and the allocation kept in the run's folder."""
    return [
        "# the nodes' addresses, in the order of SLURM_NODEID; the rendezvous on the first",
        "i=0; names=",
        'for node in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do',
        "    addr=$(scontrol show node \"$node\" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)",
        '    export "LAUNCH_ADDR_$i=${addr:-$node}"',
        '    names="$names${names:+ }$node"; i=$((i + 1))',
        "done",
        f"export LAUNCH_RDZV_PORT=$(({PORT_BASE} + SLURM_JOB_ID % {PORT_PAIRS} * 2))",
        "export LAUNCH_SUPERVISORS_PORT=$((LAUNCH_RDZV_PORT + 1))",
        'echo "launch: job $SLURM_JOB_ID attempt ${SLURM_RESTART_COUNT:-0} on $names; rendezvous $LAUNCH_ADDR_0:$LAUNCH_RDZV_PORT"',
        'printf \'{"job_id": "%s", "nodes": "%s", "attempt": %s, "start_time": %s}\\n\' '
        '"$SLURM_JOB_ID" "$names" "${SLURM_RESTART_COUNT:-0}" "$(date +%s.%N)" > "$run/allocation.json"',
    ]


def _node_part(plan: LaunchPlan, job: "JobSpec", slurm: "SlurmSpec", options: PlanOptions) -> list[str]:
    """What every node runs, by its SLURM_NODEID: its image loaded when it lacks it (docker), then
    its planned command, in its own folder."""
    lines = ["# every node's part, by its SLURM_NODEID", "read -r -d '' node_part <<'LAUNCH_NODE_PART'"]
    first = plan.nodes[0]
    if not slurm.nic:
        lines += _nic_lines()
    if first.image and options.container == "docker":
        assert plan.image_id and options.image_file
        # the archive is named by the image's id: it may carry another job's tag for the same content
        inspect = shlex.join(["docker", "image", "inspect", "--format", "{{.Id}}", first.image])
        has = shlex.join(["docker", "image", "inspect", plan.image_id])
        load = shlex.join(["docker", "load", "--quiet", "--input", options.image_file])
        tag = shlex.join(["docker", "tag", plan.image_id, first.image])
        lines += [f'if [ "$({inspect} 2>/dev/null)" != {shlex.quote(plan.image_id)} ]; then',
                  f"    {{ {has} >/dev/null 2>&1 || {load} >/dev/null; }} && {tag} ||",
                  f'        {{ echo "launch: $(hostname): cannot load {shlex.quote(options.image_file)}" >&2; exit 1; }}',
                  "fi"]
    elif not first.image:
        python = slurm.python or "python3"
        if python.startswith("/"):
            lines.append(f'export PATH={shlex.quote(python.rsplit("/", 1)[0])}:"$PATH"')
    lines.append('case "$SLURM_NODEID" in')
    in_pyxis = first.image is not None and options.container == "pyxis"  # the part runs in the container already
    for node in plan.nodes:
        folder = CONTAINER_RUN_DIR if in_pyxis else node.node_dir
        lines.append(f"{node.node_rank})\n    cd {shlex.quote(folder)} && exec {shell_words(node.argv)} ;;")
    lines += ['*) echo "launch: this run has no part for node $SLURM_NODEID" >&2; exit 1 ;;', "esac", "LAUNCH_NODE_PART"]
    return lines


def _nic_lines() -> list[str]:
    """LAUNCH_NIC: the interface that holds the first node's address, or routes to it (the name a
    node's hostname resolves to may not be its address: gloo would fall back to loopback)."""
    return [
        'first=$(getent ahostsv4 "$LAUNCH_ADDR_0" | awk \'NR == 1 {print $1}\'); first=${first:-$LAUNCH_ADDR_0}',
        'LAUNCH_NIC=$(ip -o -4 addr show to "$first" | awk \'{print $2; exit}\')',
        '[ -n "$LAUNCH_NIC" ] || LAUNCH_NIC=$(ip -o route get "$first" | sed -n \'s/.* dev \\([^ ]*\\).*/\\1/p\')',
    ]


def shell_words(argv: tuple[str, ...] | list[str]) -> str:
    """argv as one shell line, each word quoted once, but for the placeholders of what only the
    allocation tells (`{launch.node0}`, `{launch.rdzv_port}`), which become its variables, and the supervisor's
    lease, which only a job submitted by an attached launcher has (LAUNCH_LEASE_S): submitted again
    by hand, the script runs the job as a detached one."""
    words, i = [], 0
    supervisor = True  # its arguments end at "--": torchrun's follow
    while i < len(argv):
        if argv[i] == RANK_WRAPPER_MODULE:  # the job's own command follows: quoted as given, every word
            return _lines(words + [shlex.quote(arg) for arg in argv[i:]])
        supervisor = supervisor and argv[i] != "--"
        if supervisor and argv[i] == "--lease" and i + 1 < len(argv):
            words.append('${LAUNCH_LEASE_S:+--lease "$LAUNCH_LEASE_S"}')
            i += 2
            continue
        words.append(_word(argv[i]))
        i += 1
    return _lines(words)


def _lines(words: list[str]) -> str:
    """Words joined into lines a person can read: one variable or mount each, torchrun on its own."""
    out, in_env = "", False
    for k, word in enumerate(words):
        before = words[k - 1] if k else ""
        assignment = bool(re.match(r"[A-Za-z_][A-Za-z0-9_]*=", word)) and (before == "env" or in_env)
        after_env, in_env = in_env and not assignment, assignment
        if k and (word in ("--env", "--volume", "--bind", "--", "--no-python") or before == "--" or assignment or after_env):
            out += " \\\n        "
        elif k:
            out += " "
        out += word
    return out


def _word(arg: str) -> str:
    pieces, last = [], 0
    for match in _PLACEHOLDER.finditer(arg):
        if match.start() > last:
            pieces.append(shlex.quote(arg[last:match.start()]))
        name = f"LAUNCH_ADDR_{match.group(2)}" if match.group(2) is not None else _VARIABLES[match.group(0)]
        pieces.append(f'"${{{name}}}"')
        last = match.end()
    if last < len(arg) or not pieces:
        pieces.append(shlex.quote(arg[last:]))
    return "".join(pieces)
