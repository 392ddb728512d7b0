"""cluster.yaml's `slurm:` block: exact one-line messages for bad input, SlurmSpec for good, and the node
slots a run of a job gets on a Slurm inventory."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.spec import (CONTAINERS, ClusterSpec, Host, SlurmSpec, SshSettings, load_cluster, load_job, select_hosts,
                           slurm_nodes)

SLURM = "slurm:\n  login: local\n  shared_dir: /shared/me/launch\n"
JOB = "command: [python, train.py]\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def cluster_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, "cluster.yaml", text)
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    message = str(info.value)
    assert "\n" not in message
    return message.removeprefix(f"{path}: ")


def slurm_of(tmp_path: Path, text: str) -> SlurmSpec:
    cluster = load_cluster(write(tmp_path, "cluster.yaml", text))
    assert cluster.hosts == () and cluster.slurm is not None
    return cluster.slurm


def block(**keys: str) -> str:
    """A slurm block with login and shared_dir, and `keys` as written (YAML flow values)."""
    lines = {"login": "local", "shared_dir": "/shared/me/launch", **keys}
    return "slurm:\n" + "".join(f"  {k}: {v}\n" for k, v in lines.items() if v is not None)


# ---------------------------------------------------------------------------------------------
# bad input, exact messages
# ---------------------------------------------------------------------------------------------

LAUNCHER_SETS = "leave it out of sbatch_args"
ERRORS = [
    pytest.param("hosts:\n  - {name: a, address: 192.0.2.1}\n" + SLURM,
                 "has both `hosts` and `slurm`; an inventory lists its machines (hosts) or names a Slurm cluster that "
                 "picks them (slurm), not both", id="both-blocks"),
    pytest.param("hosts: []\n" + SLURM, "has both `hosts` and `slurm`; an inventory lists its machines (hosts) or names a "
                 "Slurm cluster that picks them (slurm), not both", id="both-blocks-empty-hosts"),
    pytest.param("ssh: {user: lab}\n", "hosts: missing; an inventory needs `hosts` (your machines) or `slurm` (a Slurm cluster)",
                 id="neither-block"),
    pytest.param("slurm:\n", "hosts: missing; an inventory needs `hosts` (your machines) or `slurm` (a Slurm cluster)",
                 id="slurm-null"),
    pytest.param("slrum:\n  login: local\n", "unknown key 'slrum'; did you mean 'slurm'?", id="misspelt-slurm"),
    pytest.param("slurm: [login]\n", "slurm: expected a mapping, got a list", id="slurm-list"),
    pytest.param("slurm: local\n", "slurm: expected a mapping, got 'local'", id="slurm-string"),
    pytest.param("slurm:\n  login: local\n", "slurm.shared_dir: missing; this key is required", id="no-shared-dir"),
    pytest.param("slurm:\n  shared_dir: /shared\n", "slurm.login: missing; this key is required", id="no-login"),
    pytest.param(block(partiton="debug"), "slurm: unknown key 'partiton'; did you mean 'partition'?", id="misspelt-key"),
    pytest.param(block(hosts="[a]"), "slurm: unknown key 'hosts'; valid keys: login, shared_dir, partition, account, "
                 "cpus_per_node, gpus_per_node, nic, python, container, sbatch_args", id="unknown-key"),
    pytest.param(block(gpus="2"), "slurm: unknown key 'gpus'; did you mean 'gpus_per_node'?", id="hosts-key-in-slurm"),
    pytest.param(block(login="-oProxyCommand=x"), "slurm.login: expected a host name, an IP address or 'local', got "
                 "'-oProxyCommand=x'", id="login-option"),
    pytest.param(block(login="'me@login.example'"), "slurm.login: expected a host name, an IP address or 'local', got "
                 "'me@login.example'", id="login-user-at"),
    pytest.param(block(login="3"), "slurm.login: expected a host name, an IP address or 'local', got 3", id="login-int"),
    pytest.param(block(shared_dir="shared/me"), "slurm.shared_dir: expected an absolute path that the login side and every "
                 "node see, such as /shared/me/launch, got 'shared/me'", id="shared-dir-relative"),
    pytest.param(block(shared_dir="~/launch"), "slurm.shared_dir: expected an absolute path that the login side and every "
                 "node see, such as /shared/me/launch, got '~/launch'", id="shared-dir-tilde"),
    pytest.param(block(shared_dir="/shared/../etc"), "slurm.shared_dir: expected an absolute path that the login side and "
                 "every node see, such as /shared/me/launch, got '/shared/../etc'", id="shared-dir-dotdot"),
    pytest.param(block(shared_dir="/shared/me/.."), "slurm.shared_dir: expected an absolute path that the login side and "
                 "every node see, such as /shared/me/launch, got '/shared/me/..'", id="shared-dir-dotdot-last"),
    pytest.param(block(shared_dir="//"), "slurm.shared_dir: expected an absolute path that the login side and every node "
                 "see, such as /shared/me/launch, got '//'", id="shared-dir-root"),
    pytest.param(block(shared_dir="[/shared]"), "slurm.shared_dir: expected an absolute path that the login side and every "
                 "node see, such as /shared/me/launch, got a list", id="shared-dir-list"),
    pytest.param(block(shared_dir="'/shared/run%j'"), "slurm.shared_dir: '/shared/run%j' holds '%'; choose a path without "
                 "blanks, control characters or any of % \\ : , ' \" $ ` (Slurm's file name patterns and container mounts "
                 "read them)", id="shared-dir-percent"),
    pytest.param(block(shared_dir="'/shared/a:b'"), "slurm.shared_dir: '/shared/a:b' holds ':'; choose a path without "
                 "blanks, control characters or any of % \\ : , ' \" $ ` (Slurm's file name patterns and container mounts "
                 "read them)", id="shared-dir-colon"),
    pytest.param(block(shared_dir="'/shared/my runs'"), "slurm.shared_dir: '/shared/my runs' holds ' '; choose a path "
                 "without blanks, control characters or any of % \\ : , ' \" $ ` (Slurm's file name patterns and container "
                 "mounts read them)", id="shared-dir-blank"),
    pytest.param(block(shared_dir='"/shared/a\\nb"'), "slurm.shared_dir: '/shared/a\\nb' holds '\\n'; choose a path "
                 "without blanks, control characters or any of % \\ : , ' \" $ ` (Slurm's file name patterns and container "
                 "mounts read them)", id="shared-dir-newline"),
    pytest.param(block(partition="'debug queue'"), "slurm.partition: expected a name of letters, digits, '_', '.' or '-', "
                 "got 'debug queue'", id="partition-blank"),
    pytest.param(block(partition="-x"), "slurm.partition: expected a name of letters, digits, '_', '.' or '-', got '-x'",
                 id="partition-option"),
    pytest.param(block(account="'proj;rm'"), "slurm.account: expected a name of letters, digits, '_', '.' or '-', got "
                 "'proj;rm'", id="account-semicolon"),
    pytest.param(block(account="7"), "slurm.account: expected a name of letters, digits, '_', '.' or '-', got 7",
                 id="account-int"),
    pytest.param(block(cpus_per_node="0"), "slurm.cpus_per_node: expected an integer from 1 to 1024, got 0", id="cpus-zero"),
    pytest.param(block(cpus_per_node="2000"), "slurm.cpus_per_node: expected an integer from 1 to 1024, got 2000",
                 id="cpus-high"),
    pytest.param(block(cpus_per_node="'8'"), "slurm.cpus_per_node: expected an integer from 1 to 1024, got '8'",
                 id="cpus-string"),
    pytest.param(block(gpus_per_node="-1"), "slurm.gpus_per_node: expected an integer from 0 to 256, got -1", id="gpus-negative"),
    pytest.param(block(gpus_per_node="true"), "slurm.gpus_per_node: expected an integer from 0 to 256, got the boolean true",
                 id="gpus-bool"),
    pytest.param(block(gpus_per_node="[0, 1]"), "slurm.gpus_per_node: expected an integer from 0 to 256, got a list",
                 id="gpus-list"),
    pytest.param(block(nic="'eth 0'"), "slurm.nic: expected a network interface name such as eth0, got 'eth 0'", id="nic-blank"),
    pytest.param(block(python="-c"), "slurm.python: expected a path to a Python interpreter, or its name on PATH, got '-c'",
                 id="python-option"),
    pytest.param(block(container="singularity"), "slurm.container: expected one of docker | apptainer | pyxis, got "
                 "'singularity'", id="container-unknown"),
    pytest.param(block(container="true"), "slurm.container: expected one of docker | apptainer | pyxis, got the boolean true",
                 id="container-bool"),
    pytest.param(block(sbatch_args="--qos=normal"), "slurm.sbatch_args: expected a list of sbatch options, e.g. "
                 "[--qos=normal], got '--qos=normal'", id="sbatch-args-string"),
    pytest.param(block(sbatch_args="{qos: normal}"), "slurm.sbatch_args: expected a list of sbatch options, e.g. "
                 "[--qos=normal], got a mapping", id="sbatch-args-mapping"),
    pytest.param(block(sbatch_args="[3]"), "slurm.sbatch_args[0]: expected a string (quote it, e.g. \"--qos=normal\"), got 3",
                 id="sbatch-args-int"),
    pytest.param(block(sbatch_args="[--exclusive, [a]]"), "slurm.sbatch_args[1]: expected a string (quote it, e.g. "
                 "\"--qos=normal\"), got a list", id="sbatch-args-nested-list"),
    pytest.param(block(sbatch_args="[null]"), "slurm.sbatch_args[0]: expected a string (quote it, e.g. \"--qos=normal\"), "
                 "got nothing", id="sbatch-args-null-item"),
    pytest.param(block(sbatch_args="[normal]"), "slurm.sbatch_args[0]: expected an sbatch option starting with '-', such as "
                 "--qos=normal, got 'normal'", id="sbatch-args-no-dash"),
    pytest.param(block(sbatch_args="[--qos, normal]"), "slurm.sbatch_args[1]: 'normal' is not an option; give an option "
                 "and its value as one item: '--qos=normal'", id="sbatch-args-separate-value"),
    pytest.param(block(sbatch_args="[-q, normal]"), "slurm.sbatch_args[1]: 'normal' is not an option; give an option "
                 "and its value as one item: '-qnormal'", id="sbatch-args-separate-short-value"),
    pytest.param(block(sbatch_args="['--qos normal']"), "slurm.sbatch_args[0]: expected an sbatch option with its value "
                 "attached, such as --qos=normal or -qnormal, got '--qos normal'", id="sbatch-args-long-blank"),
    pytest.param(block(sbatch_args="['-q normal']"), "slurm.sbatch_args[0]: expected an sbatch option with its value "
                 "attached, such as --qos=normal or -qnormal, got '-q normal'", id="sbatch-args-short-blank"),
    pytest.param(block(sbatch_args="['--']"), "slurm.sbatch_args[0]: expected an sbatch option with its value attached, "
                 "such as --qos=normal or -qnormal, got '--'", id="sbatch-args-double-dash"),
    pytest.param(block(sbatch_args="['-']"), "slurm.sbatch_args[0]: expected an sbatch option with its value attached, "
                 "such as --qos=normal or -qnormal, got '-'", id="sbatch-args-dash"),
    pytest.param(block(sbatch_args="['-5']"), "slurm.sbatch_args[0]: expected an sbatch option with its value attached, "
                 "such as --qos=normal or -qnormal, got '-5'", id="sbatch-args-dash-digit"),
    pytest.param(block(sbatch_args='["--comment=a\\nb"]'), "slurm.sbatch_args[0]: expected an sbatch option without "
                 "control characters or line breaks, got '--comment=a\\nb'", id="sbatch-args-newline"),
    pytest.param(block(sbatch_args="[--nodes=3]"), "slurm.sbatch_args[0]: '--nodes=3' is -N/--nodes, which the launcher "
                 f"sets from job.yaml's nodes (or --nodes); {LAUNCHER_SETS}", id="sbatch-args-nodes"),
    pytest.param(block(sbatch_args="['-N 3']"), "slurm.sbatch_args[0]: '-N 3' is -N/--nodes, which the launcher sets from "
                 f"job.yaml's nodes (or --nodes); {LAUNCHER_SETS}", id="sbatch-args-N-blank-3"),
    pytest.param(block(sbatch_args="[-N, '3']"), "slurm.sbatch_args[0]: '-N' is -N/--nodes, which the launcher sets from "
                 f"job.yaml's nodes (or --nodes); {LAUNCHER_SETS}", id="sbatch-args-N-then-3"),
    pytest.param(block(sbatch_args="[-N3]"), "slurm.sbatch_args[0]: '-N3' is -N/--nodes, which the launcher sets from "
                 f"job.yaml's nodes (or --nodes); {LAUNCHER_SETS}", id="sbatch-args-N3"),
    pytest.param(block(sbatch_args="[-vN3]"), "slurm.sbatch_args[0]: '-vN3' is -N/--nodes, which the launcher sets from "
                 f"job.yaml's nodes (or --nodes); {LAUNCHER_SETS}", id="sbatch-args-flag-cluster"),
    pytest.param(block(sbatch_args="['--nodes 3']"), "slurm.sbatch_args[0]: '--nodes 3' is -N/--nodes, which the launcher "
                 f"sets from job.yaml's nodes (or --nodes); {LAUNCHER_SETS}", id="sbatch-args-nodes-blank-3"),
    pytest.param(block(sbatch_args="[--exclusive, --time=10]"), "slurm.sbatch_args[1]: '--time=10' is -t/--time, which the "
                 f"launcher sets from job.yaml's timeout; {LAUNCHER_SETS}", id="sbatch-args-time"),
    pytest.param(block(sbatch_args="[-t10]"), "slurm.sbatch_args[0]: '-t10' is -t/--time, which the launcher sets from "
                 f"job.yaml's timeout; {LAUNCHER_SETS}", id="sbatch-args-t"),
    pytest.param(block(sbatch_args="[--tim=10]"), "slurm.sbatch_args[0]: '--tim=10' is -t/--time, which the launcher sets "
                 f"from job.yaml's timeout; {LAUNCHER_SETS}", id="sbatch-args-time-abbreviated"),
    pytest.param(block(sbatch_args="[--requeue]"), "slurm.sbatch_args[0]: '--requeue' is --requeue, which the launcher sets "
                 f"from job.yaml's max_restarts; {LAUNCHER_SETS}", id="sbatch-args-requeue"),
    pytest.param(block(sbatch_args="[--no-requeue]"), "slurm.sbatch_args[0]: '--no-requeue' is --no-requeue, which the "
                 f"launcher sets from job.yaml's max_restarts; {LAUNCHER_SETS}", id="sbatch-args-no-requeue"),
    pytest.param(block(sbatch_args="[-Jx]"), "slurm.sbatch_args[0]: '-Jx' is -J/--job-name, which the launcher sets from "
                 f"job.yaml's name; {LAUNCHER_SETS}", id="sbatch-args-J"),
    pytest.param(block(sbatch_args="[--job-name=x]"), "slurm.sbatch_args[0]: '--job-name=x' is -J/--job-name, which the "
                 f"launcher sets from job.yaml's name; {LAUNCHER_SETS}", id="sbatch-args-job-name"),
    pytest.param(block(sbatch_args="[--ntasks-per-node=4]"), "slurm.sbatch_args[0]: '--ntasks-per-node=4' is "
                 "--ntasks-per-node, which the launcher sets itself: one task per node, which starts job.yaml's "
                 f"nproc_per_node processes; {LAUNCHER_SETS}", id="sbatch-args-ntasks-per-node"),
    pytest.param(block(sbatch_args="[-n4]"), "slurm.sbatch_args[0]: '-n4' is -n/--ntasks, which the launcher sets itself: "
                 f"one task per node, which starts job.yaml's nproc_per_node processes; {LAUNCHER_SETS}", id="sbatch-args-n"),
    pytest.param(block(sbatch_args="['-o/tmp/x']"), "slurm.sbatch_args[0]: '-o/tmp/x' is -o/--output, which the launcher "
                 f"sets itself: the job's output goes to its run directory; {LAUNCHER_SETS}", id="sbatch-args-o"),
    pytest.param(block(sbatch_args="[--error=/tmp/x]"), "slurm.sbatch_args[0]: '--error=/tmp/x' is -e/--error, which the "
                 f"launcher sets itself: the job's output goes to its run directory; {LAUNCHER_SETS}", id="sbatch-args-error"),
    pytest.param(block(sbatch_args="['--signal=B:USR1@60']"), "slurm.sbatch_args[0]: '--signal=B:USR1@60' is --signal, "
                 f"which the launcher sets itself, to stop the run cleanly; {LAUNCHER_SETS}", id="sbatch-args-signal"),
    pytest.param(block(sbatch_args="[--parsable]"), "slurm.sbatch_args[0]: '--parsable' is --parsable, which the launcher "
                 f"sets itself, to read the job id; {LAUNCHER_SETS}", id="sbatch-args-parsable"),
    pytest.param(block(sbatch_args="['-D/tmp']"), "slurm.sbatch_args[0]: '-D/tmp' is -D/--chdir, which the launcher sets "
                 f"itself: the run's folder under shared_dir; {LAUNCHER_SETS}", id="sbatch-args-D"),
    pytest.param(block(sbatch_args="[--gpus-per-node=2]"), "slurm.sbatch_args[0]: '--gpus-per-node=2' is --gpus-per-node, "
                 f"which the launcher sets from slurm.gpus_per_node; {LAUNCHER_SETS}", id="sbatch-args-gpus-per-node"),
    pytest.param(block(sbatch_args="['--wrap=hostname']"), "slurm.sbatch_args[0]: '--wrap=hostname' is --wrap, which the "
                 f"launcher sets itself: it submits its own batch script; {LAUNCHER_SETS}", id="sbatch-args-wrap"),
    pytest.param(block(sbatch_args="['--array=1-4']"), "slurm.sbatch_args[0]: '--array=1-4' is -a/--array, which the "
                 f"launcher sets itself: one job per run; {LAUNCHER_SETS}", id="sbatch-args-array"),
]


@pytest.mark.parametrize("text, message", ERRORS)
def test_bad_slurm_block_gives_one_exact_line(tmp_path: Path, text: str, message: str) -> None:
    assert cluster_error(tmp_path, text) == message


def test_a_job_file_named_as_inventory_names_both_forms(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster.yaml", JOB)
    with pytest.raises(SpecError, match=r"it is a job file \(it has `command`\); name an inventory with `hosts` or `slurm`$"):
        load_cluster(path, origin="--cluster")


def test_the_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster.yaml", block(container="podman"))
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    assert str(info.value).startswith(f"{path}: slurm.container: ")


# ---------------------------------------------------------------------------------------------
# good blocks
# ---------------------------------------------------------------------------------------------

FULL = """\
ssh:
  user: lab
  port: 2222
  identity_file: ~/.ssh/id_ed25519
  host_key_policy: accept-new
slurm:
  login: login.example
  shared_dir: /shared//me/./launch/
  partition: debug
  account: proj1
  cpus_per_node: 2
  gpus_per_node: 0
  nic: eth0
  python: /shared/venv/bin/python
  container: apptainer
  sbatch_args: [--qos=normal, --exclusive, -pdebug, "--comment=two words", -H, --gpus=2, --mem=0, --time-min=10, -vQ]
"""


def test_full_block_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster.yaml", FULL)
    ssh = SshSettings(user="lab", port=2222, identity_file="~/.ssh/id_ed25519", host_key_policy="accept-new")
    assert load_cluster(path) == ClusterSpec(
        path=path,
        hosts=(),
        slurm=SlurmSpec(
            login="login.example",
            shared_dir="/shared/me/launch",
            partition="debug",
            account="proj1",
            cpus_per_node=2,
            gpus_per_node=0,
            nic="eth0",
            python="/shared/venv/bin/python",
            container="apptainer",
            sbatch_args=("--qos=normal", "--exclusive", "-pdebug", "--comment=two words", "-H", "--gpus=2", "--mem=0",
                         "--time-min=10", "-vQ"),
            login_host=Host(name="login", address="login.example", ssh=ssh),
        ),
    )
    assert not load_cluster(path).slurm.is_local


def test_minimal_block_takes_defaults(tmp_path: Path) -> None:
    slurm = slurm_of(tmp_path, SLURM)
    assert slurm == SlurmSpec(login="local", shared_dir="/shared/me/launch")
    assert (slurm.partition, slurm.account, slurm.cpus_per_node, slurm.gpus_per_node, slurm.nic, slurm.python,
            slurm.container, slurm.sbatch_args, slurm.login_host) == (None, None, None, 0, None, None, "docker", (), None)
    assert slurm.is_local


def test_ssh_block_beside_a_local_login_is_checked_but_unused(tmp_path: Path) -> None:
    assert slurm_of(tmp_path, "ssh: {user: lab}\n" + SLURM).login_host is None
    assert cluster_error(tmp_path, "ssh: {port: 0}\n" + SLURM) == "ssh.port: expected an integer from 1 to 65535, got 0"


@pytest.mark.parametrize("login, address", [("192.0.2.7", "192.0.2.7"), ("'[2001:db8::1]'", "2001:db8::1"),
                                            ("login.example", "login.example"), ("hpc-login", "hpc-login")])
def test_login_over_ssh(tmp_path: Path, login: str, address: str) -> None:
    slurm = slurm_of(tmp_path, block(login=login))
    assert slurm.login == address and not slurm.is_local
    assert slurm.login_host == Host(name="login", address=address, ssh=SshSettings())


@pytest.mark.parametrize("given, kept", [("/shared", "/shared"), ("/shared/", "/shared"), ("/a/./b//c/", "/a/b/c"),
                                         ("/a..b/c", "/a..b/c"), ("/gpfs/u-1/launch_runs", "/gpfs/u-1/launch_runs")])
def test_shared_dir_is_normalised(tmp_path: Path, given: str, kept: str) -> None:
    assert slurm_of(tmp_path, block(shared_dir=given)).shared_dir == kept


@pytest.mark.parametrize("container", CONTAINERS)
def test_every_container(tmp_path: Path, container: str) -> None:
    assert slurm_of(tmp_path, block(container=container)).container == container


def test_containers() -> None:
    assert CONTAINERS == ["docker", "apptainer", "pyxis"]


@pytest.mark.parametrize("args", ["[--gpus=4]", "[-pdebug]", "[--nodelist=c1]", "[-wc1]", "[--exclude=c2]", "[-kfoo]",
                                  "[--time-min=5]", "[--ntasks-per-core=1]", "[--mem-per-cpu=2G]", "[-Cgpu]",
                                  "[--gres=gpu:2]", "[-pN]", "[-Aproj-N]", "[]"])
def test_sbatch_args_that_pass(tmp_path: Path, args: str) -> None:
    slurm_of(tmp_path, block(sbatch_args=args))


# ---------------------------------------------------------------------------------------------
# node slots and select_hosts
# ---------------------------------------------------------------------------------------------

def test_slurm_nodes() -> None:
    slurm = SlurmSpec(login="local", shared_dir="/shared", cpus_per_node=4, gpus_per_node=2, nic="ib0", python="/v/bin/python")
    assert slurm_nodes(slurm, 3) == tuple(
        Host(name=f"node{k}", address="{launch.node%d}" % k, gpus=2, slots=4, nic="ib0", python="/v/bin/python") for k in range(3)
    )
    assert [h.address for h in slurm_nodes(slurm, 2)] == ["{launch.node0}", "{launch.node1}"]
    assert not any(h.is_local for h in slurm_nodes(slurm, 2))
    assert slurm_nodes(slurm, 0) == ()


def test_slurm_nodes_without_cpus_or_gpus() -> None:
    (node,) = slurm_nodes(SlurmSpec(login="local", shared_dir="/shared"), 1)
    assert (node.gpus, node.slots, node.nic, node.python) == (0, None, None, None)


def job_and_cluster(tmp_path: Path, job_text: str, slurm_text: str):
    (tmp_path / "job").mkdir(exist_ok=True)
    job = load_job(write(tmp_path / "job", "job.yaml", JOB + job_text))
    return job, load_cluster(write(tmp_path, "cluster.yaml", slurm_text))


@pytest.mark.parametrize("job_nodes, nodes, count", [("", None, 1), ("nodes: 3\n", None, 3), ("nodes: 3\n", 5, 5),
                                                     ("", 64, 64), ("nodes: 500\n", None, 500)])
def test_select_hosts_takes_as_many_as_asked(tmp_path: Path, job_nodes: str, nodes: int | None, count: int) -> None:
    job, cluster = job_and_cluster(tmp_path, job_nodes, block(cpus_per_node="2"))
    hosts = select_hosts(job, cluster, nodes)
    assert hosts == slurm_nodes(cluster.slurm, count)


def test_select_hosts_refuses_zero_nodes(tmp_path: Path) -> None:
    job, cluster = job_and_cluster(tmp_path, "", SLURM)
    with pytest.raises(SpecError, match=r"^--nodes: expected a positive integer, got 0$"):
        select_hosts(job, cluster, 0, "--nodes")


def test_nproc_bounded_by_cpus_per_node(tmp_path: Path) -> None:
    job, cluster = job_and_cluster(tmp_path, "nproc_per_node: 3\n", block(cpus_per_node="2"))
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster)
    assert str(info.value) == (f"{job.path}: nproc_per_node: 3 is more than the 2 CPU(s) of a node "
                               f"(slurm.cpus_per_node in {cluster.label})")
    job, cluster = job_and_cluster(tmp_path, "nproc_per_node: 2\n", block(cpus_per_node="2"))
    assert len(select_hosts(job, cluster)) == 1


def test_nproc_unbounded_without_cpus_per_node(tmp_path: Path) -> None:
    job, cluster = job_and_cluster(tmp_path, "nproc_per_node: 64\n", SLURM)
    assert len(select_hosts(job, cluster)) == 1


def test_nccl_needs_gpus_per_node(tmp_path: Path) -> None:
    job, cluster = job_and_cluster(tmp_path, "backend: nccl\n", SLURM)
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster)
    assert str(info.value) == (f"{job.path}: backend: nccl needs GPUs, but {cluster.label} has slurm.gpus_per_node: 0; "
                               "use gloo or auto, or give the nodes' GPUs")


@pytest.mark.parametrize("backend", ["nccl", "auto"])
def test_nccl_nproc_bounded_by_gpus_per_node(tmp_path: Path, backend: str) -> None:
    job, cluster = job_and_cluster(tmp_path, f"backend: {backend}\nnproc_per_node: 3\n", block(gpus_per_node="2", cpus_per_node="16"))
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster, 2)
    assert str(info.value) == (f"{job.path}: nproc_per_node: 3 is more than the 2 GPUs of a node (slurm.gpus_per_node in "
                               f"{cluster.label}); nccl needs one GPU per process")


def test_one_gpu_said_as_such(tmp_path: Path) -> None:
    job, cluster = job_and_cluster(tmp_path, "nproc_per_node: 2\n", block(gpus_per_node="1"))
    with pytest.raises(SpecError, match=r"more than the 1 GPU of a node"):
        select_hosts(job, cluster)


def test_gloo_on_gpu_nodes_may_exceed_gpus(tmp_path: Path) -> None:
    job, cluster = job_and_cluster(tmp_path, "backend: gloo\nnproc_per_node: 4\n", block(gpus_per_node="2"))
    assert [h.gpus for h in select_hosts(job, cluster, 2)] == [2, 2]


def test_nccl_within_gpus(tmp_path: Path) -> None:
    job, cluster = job_and_cluster(tmp_path, "backend: nccl\nnproc_per_node: 2\nnodes: 2\n", block(gpus_per_node="2"))
    assert [h.name for h in select_hosts(job, cluster)] == ["node0", "node1"]


def test_hosts_inventories_are_as_before(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, "cluster.yaml", "hosts:\n  - {name: a, address: 192.0.2.1}\n"))
    assert cluster.slurm is None and [h.name for h in cluster.hosts] == ["a"]
