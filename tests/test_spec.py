"""Loading and checking job.yaml and cluster.yaml: exact one-line messages for bad input, dataclasses for good."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.spec.fields import parse_duration, suggest
from launcher.spec import (
    ClusterSpec,
    Host,
    ImageSpec,
    JobSpec,
    SshSettings,
    backend_for,
    load_cluster,
    load_job,
    local_cluster,
    select_hosts,
)
from launcher.spec.yamlfile import load_mapping

CLUSTER = "hosts:\n  - {name: a, address: 192.0.2.1}\n"
JOB = "command: [python, train.py]\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def job_error(tmp_path: Path, text: str) -> str:
    """The message load_job gives for a job.yaml holding `text`."""
    path = write(tmp_path, "job.yaml", text)
    with pytest.raises(SpecError) as info:
        load_job(path)
    return str(info.value)


def cluster_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, "cluster.yaml", text)
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    return str(info.value)


def hosts_of(tmp_path: Path, text: str) -> ClusterSpec:
    return load_cluster(write(tmp_path, "cluster.yaml", text))


# ---------------------------------------------------------------------------------------------
# job.yaml: bad input, exact messages
# ---------------------------------------------------------------------------------------------

JOB_ERRORS = [
    pytest.param(JOB + "nproc: 2\n", "unknown key 'nproc'; did you mean 'nproc_per_node'?", id="unknown-key-suggestion"),
    pytest.param(JOB + "comand: [x]\n", "unknown key 'comand'; did you mean 'command'?", id="misspelt-key"),
    pytest.param(
        JOB + "flavour: blue\n",
        "unknown key 'flavour'; valid keys: name, cluster, nodes, nproc_per_node, backend, workdir, command, env, "
        "secrets, image, runtime, rdzv_port, max_restarts, timeout, scaling, warmup_steps, resume, hang_warning, outputs, outputs_limit",
        id="unknown-key-lists-valid-keys",
    ),
    pytest.param(JOB + "outputs: [../x]\n", "outputs[0]: expected a glob relative to the working directory, such as '*.pt' or "
                 "'out/*', got '../x'", id="outputs-leave-the-folder"),
    pytest.param(JOB + "outputs: [/etc/*]\n", "outputs[0]: expected a glob relative to the working directory, such as '*.pt' or "
                 "'out/*', got '/etc/*'", id="outputs-absolute"),
    pytest.param(JOB + "outputs_limit: lots\n", "outputs_limit: expected a size such as 500MB or 2GB, got 'lots'", id="outputs-limit-word"),
    pytest.param(JOB + "outputs_limit: 2PB\n", "outputs_limit: expected a size such as 500MB or 2GB, got '2PB'", id="outputs-limit-unit"),
    pytest.param(JOB + "image:\n  bse: python:3.12\n", "image: unknown key 'bse'; did you mean 'base'?", id="unknown-key-in-image"),
    pytest.param(JOB + "image: python:3.12\n", "image: expected a mapping, got 'python:3.12'", id="image-not-mapping"),
    pytest.param(JOB + "image: {base: 3}\n", "image.base: expected a string, got 3", id="image-base-int"),
    pytest.param(JOB + "nodes: two\n", "nodes: expected a positive integer, got 'two'", id="nodes-string"),
    pytest.param(JOB + "nodes: 0\n", "nodes: expected a positive integer, got 0", id="nodes-zero"),
    pytest.param(JOB + "nodes: true\n", "nodes: expected a positive integer, got the boolean true", id="nodes-bool"),
    pytest.param(JOB + "nproc_per_node: 0\n", "nproc_per_node: expected an integer from 1 to 1024, or 'auto', got 0", id="nproc-zero"),
    pytest.param(JOB + "nproc_per_node: many\n", "nproc_per_node: expected an integer from 1 to 1024, or 'auto', got 'many'", id="nproc-many"),
    pytest.param(JOB + "nproc_per_node: 2.0\n", "nproc_per_node: expected an integer from 1 to 1024, or 'auto', got 2.0", id="nproc-float"),
    pytest.param(JOB + "timeout: soon\n", "timeout: expected a duration such as 90s, 30m, 1h or 1h30m, got 'soon'", id="timeout-soon"),
    pytest.param(JOB + "timeout: 0\n", "timeout: expected a duration such as 90s, 30m, 1h or 1h30m, got 0", id="timeout-zero"),
    pytest.param(JOB + "timeout: -5\n", "timeout: expected a duration such as 90s, 30m, 1h or 1h30m, got -5", id="timeout-negative"),
    pytest.param(JOB + "timeout: 1.5h\n", "timeout: expected a duration such as 90s, 30m, 1h or 1h30m, got '1.5h'", id="timeout-fraction"),
    pytest.param(JOB + "timeout: yes\n", "timeout: expected a duration such as 90s, 30m, 1h or 1h30m, got the boolean true", id="timeout-bool"),
    pytest.param(JOB + "backend: NCCL\n", "backend: expected one of auto | gloo | nccl, got 'NCCL'", id="backend-case"),
    pytest.param(JOB + "runtime: podman\n", "runtime: expected one of docker | host, got 'podman'", id="runtime"),
    pytest.param(JOB + "rdzv_port: 70000\n", "rdzv_port: expected an integer from 1 to 65534, got 70000", id="rdzv-port-high"),
    pytest.param(JOB + "max_restarts: -1\n", "max_restarts: expected an integer from 0 to 1000, got -1", id="max-restarts"),
    pytest.param(
        "command: python train.py\n",
        "command: expected a list of strings, e.g. [python, train.py], got 'python train.py'",
        id="command-string",
    ),
    pytest.param(
        "command: [python, train.py, --lr, 0.1]\n",
        'command[3]: expected a string (quote it, e.g. "1.0" or "true"), got 0.1',
        id="command-float",
    ),
    pytest.param(
        "command: [python, train.py, --amp, true]\n",
        'command[3]: expected a string (quote it, e.g. "1.0" or "true"), got the boolean true',
        id="command-bool",
    ),
    pytest.param("command: []\n", "command: expected a non-empty list, e.g. [python, train.py], got a list", id="command-empty"),
    pytest.param("name: x\n", "command: missing; this key is required", id="command-missing"),
    pytest.param("command:\n", "command: missing; this key is required", id="command-null"),
    pytest.param(JOB + "name: my job\n", "name: expected a name of letters, digits, '.', '_' or '-', got 'my job'", id="name-space"),
    pytest.param(JOB + "workdir: 3\n", "workdir: expected a string, got 3", id="workdir-int"),
    pytest.param(
        JOB + "env: {DEBUG: true}\n",
        'env.DEBUG: expected a string (quote it, e.g. "1.0" or "true"), got the boolean true',
        id="env-bool",
    ),
    pytest.param(
        JOB + "env: {RATE: 1.5}\n",
        'env.RATE: expected a string (quote it, e.g. "1.0" or "true"), got 1.5',
        id="env-float",
    ),
    pytest.param(JOB + "env: {EMPTY: }\n", 'env.EMPTY: expected a string (quote it, e.g. "1.0" or "true"), got nothing', id="env-null"),
    pytest.param(JOB + "env: {A-B: x}\n", "env: expected variable names of letters, digits and '_', got 'A-B'", id="env-bad-name"),
    pytest.param(JOB + "env: [A=1]\n", "env: expected a mapping of variable names to strings, got a list", id="env-list"),
    pytest.param(
        JOB + "env: {WANDB_API_KEY: abc}\nsecrets: [WANDB_API_KEY]\n",
        "secrets: 'WANDB_API_KEY' is also set in env; a secret's value comes only from the launcher's environment",
        id="secret-in-env",
    ),
    pytest.param(JOB + "secrets: [WANDB-KEY]\n", "secrets[0]: expected an environment variable name, got 'WANDB-KEY'", id="secret-bad-name"),
    pytest.param(
        JOB + "secrets: WANDB_API_KEY\n",
        "secrets: expected a list of strings, e.g. [python, train.py], got 'WANDB_API_KEY'",
        id="secrets-string",
    ),
    pytest.param(JOB + "scaling: [1, 2, 2]\n", "scaling: expected distinct node counts, got a list", id="scaling-duplicates"),
    pytest.param(JOB + "scaling: [1, 0]\n", "scaling[1]: expected an integer from 1 to 1024, got 0", id="scaling-zero"),
    pytest.param(JOB + "scaling: 4\n", "scaling: expected a list of node counts, e.g. [1, 2, 4], got 4", id="scaling-int"),
    pytest.param(JOB + "cluster: 3\n", "cluster: expected a string, got 3", id="cluster-int"),
    pytest.param(JOB + "1: x\n", "top level: keys must be names, got 1", id="non-string-key"),
]


@pytest.mark.parametrize("text, message", JOB_ERRORS)
def test_bad_job_gives_one_exact_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "job.yaml"
    assert job_error(tmp_path, text) == f"{path}: {message}"


def test_job_workdir_that_does_not_exist(tmp_path: Path) -> None:
    message = job_error(tmp_path, JOB + "workdir: src\n")
    assert message == f"{tmp_path / 'job.yaml'}: workdir: 'src' is not a directory (resolved to {tmp_path / 'src'})"


def test_job_workdir_that_is_a_file(tmp_path: Path) -> None:
    write(tmp_path, "train.py", "")
    message = job_error(tmp_path, JOB + "workdir: train.py\n")
    assert message == f"{tmp_path / 'job.yaml'}: workdir: 'train.py' is not a directory (resolved to {tmp_path / 'train.py'})"


def test_job_requirements_file_missing(tmp_path: Path) -> None:
    message = job_error(tmp_path, JOB + "image:\n  requirements: reqs.txt\n")
    assert message == f"{tmp_path / 'job.yaml'}: image.requirements: 'reqs.txt' is not a file (resolved to {tmp_path / 'reqs.txt'})"


# ---------------------------------------------------------------------------------------------
# Reading the file itself
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: file not found"


def test_missing_cluster_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    assert str(info.value) == f"{path}: file not found"


def test_directory_given_as_file(tmp_path: Path) -> None:
    folder = tmp_path / "job.yaml"
    folder.mkdir()
    with pytest.raises(SpecError) as info:
        load_job(folder)
    assert str(info.value) == f"{folder}: is a directory, expected a YAML file"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(b"\xff\xfecommand: [a]\n")
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: line 1, column 1: not UTF-8 text (byte 0xff: invalid start byte)"


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param(
            "command: [a]\nnodes: [1, 2\n",
            "invalid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'",
            id="unclosed-bracket",
        ),
        pytest.param(
            "command: [a]\n\tnodes: 1\n",
            "invalid YAML at line 2, column 1: found character '\\t' that cannot start any token",
            id="tab",
        ),
        pytest.param(
            "command: [a]\nnodes: 1\nnodes: 2\n",
            "invalid YAML at line 3, column 1: duplicate key 'nodes' (first at line 2)",
            id="duplicate-key",
        ),
        pytest.param(
            "command: [a]\nimage:\n  base: x\n  base: y\n",
            "invalid YAML at line 4, column 3: duplicate key 'base' (first at line 3)",
            id="duplicate-nested-key",
        ),
        pytest.param("", "the file is empty, expected a mapping of settings", id="empty"),
        pytest.param("# only a comment\n", "the file is empty, expected a mapping of settings", id="only-comment"),
        pytest.param("- python\n- train.py\n", "expected a mapping of settings at the top level, got a list", id="top-list"),
        pytest.param("hello\n", "expected a mapping of settings at the top level, got 'hello'", id="top-scalar"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "job.yaml"
    assert job_error(tmp_path, text) == f"{path}: {message}"


def test_load_mapping_uses_the_label_it_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "[1, 2]\n")
    with pytest.raises(SpecError) as info:
        load_mapping(path, "--cluster")
    assert str(info.value) == "--cluster: expected a mapping of settings at the top level, got a list"


def test_unhashable_key_is_a_spec_error(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "? [a, b]\n: 1\ncommand: [a]\n")
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert str(info.value).startswith(f"{path}: invalid YAML at line 1, column 3: ")
    assert "unhashable key" in str(info.value)


def test_yaml_merge_keys_work_as_with_safe_load(tmp_path: Path) -> None:
    cluster = hosts_of(
        tmp_path,
        "hosts:\n"
        "  - &gpu {name: g1, address: 192.0.2.1, gpus: 2, user: lab}\n"
        "  - <<: *gpu\n"
        "    name: g2\n"
        "    address: 192.0.2.2\n",
    )
    assert [(h.name, h.address, h.gpus, h.ssh.user) for h in cluster.hosts] == [
        ("g1", "192.0.2.1", 2, "lab"),
        ("g2", "192.0.2.2", 2, "lab"),
    ]


# ---------------------------------------------------------------------------------------------
# cluster.yaml: bad input, exact messages
# ---------------------------------------------------------------------------------------------

CLUSTER_ERRORS = [
    pytest.param("ssh: {user: lab}\n", "hosts: missing; an inventory needs `hosts` (your machines) or `slurm` (a Slurm cluster)", id="hosts-missing"),
    pytest.param("hosts:\n", "hosts: missing; an inventory needs `hosts` (your machines) or `slurm` (a Slurm cluster)", id="hosts-null"),
    pytest.param("hosts: []\n", "hosts: expected a non-empty list of hosts, got a list", id="hosts-empty"),
    pytest.param("hosts: {a: 1}\n", "hosts: expected a non-empty list of hosts, got a mapping", id="hosts-mapping"),
    pytest.param("hosts: [a]\n", "hosts[0]: expected a mapping with name and address, got 'a'", id="host-string"),
    pytest.param("hots: []\n", "unknown key 'hots'; did you mean 'hosts'?", id="unknown-top-key"),
    pytest.param(
        "ssh:\n  usr: lab\n" + CLUSTER,
        "ssh: unknown key 'usr'; did you mean 'user'?",
        id="unknown-ssh-key",
    ),
    pytest.param(
        "hosts:\n  - {name: a, address: x, gpu: 2}\n",
        "hosts[0]: unknown key 'gpu'; did you mean 'gpus'?",
        id="unknown-host-key",
    ),
    pytest.param("hosts:\n  - {address: x}\n", "hosts[0].name: missing; this key is required", id="host-no-name"),
    pytest.param("hosts:\n  - {name: a}\n", "hosts[0].address: missing; this key is required", id="host-no-address"),
    pytest.param(
        "hosts:\n  - {name: a/b, address: x}\n",
        "hosts[0].name: expected a name of letters, digits, '.', '_' or '-', got 'a/b'",
        id="host-name-slash",
    ),
    pytest.param(
        "hosts:\n  - {name: a, address: x}\n  - {name: b, address: y}\n  - {name: a, address: z}\n",
        "hosts[2].name: 'a' is already the name of hosts[0]; host names must be unique",
        id="duplicate-host-names",
    ),
    pytest.param(
        "hosts:\n  - {name: a, address: x, gpus: four}\n",
        "hosts[0].gpus: expected a GPU count from 0 to 256, a GPU index or a device UUID (GPU-<8-4-4-4-12 hex digits>, MIG-...), got 'four'",
        id="gpus-word",
    ),
    pytest.param("hosts:\n  - {name: a, address: x, gpus: -1}\n", "hosts[0].gpus: expected an integer from 0 to 256, got -1", id="gpus-negative"),
    pytest.param(
        "hosts:\n  - {name: a, address: x, gpus: [0, 0]}\n",
        "hosts[0].gpus: expected a count or a non-empty list of at most 256 distinct GPU ids, got a list",
        id="gpus-duplicate-ids",
    ),
    pytest.param(
        "hosts:\n  - {name: a, address: x, gpus: []}\n",
        "hosts[0].gpus: expected a count or a non-empty list of at most 256 distinct GPU ids, got a list",
        id="gpus-empty-list",
    ),
    pytest.param("hosts:\n  - {name: a, address: x, slots: 0}\n", "hosts[0].slots: expected an integer from 1 to 1024, got 0", id="slots-zero"),
    pytest.param(
        "hosts:\n  - {name: a, address: x, nic: eth 0}\n",
        "hosts[0].nic: expected a network interface name such as eth0, got 'eth 0'",
        id="nic-space",
    ),
    pytest.param("ssh: {port: 70000}\n" + CLUSTER, "ssh.port: expected an integer from 1 to 65535, got 70000", id="ssh-port-high"),
    pytest.param(
        "hosts:\n  - {name: a, address: x, port: '22'}\n",
        "hosts[0].port: expected an integer from 1 to 65535, got '22'",
        id="host-port-string",
    ),
    pytest.param(
        "ssh: {host_key_policy: yes}\n" + CLUSTER,
        "ssh.host_key_policy: expected one of strict | accept-new, got the boolean true",
        id="host-key-policy-bool",
    ),
    pytest.param(
        "hosts:\n  - {name: a, address: x, host_key_policy: accept-all}\n",
        "hosts[0].host_key_policy: expected one of strict | accept-new, got 'accept-all'",
        id="host-key-policy-per-host",
    ),
    pytest.param("ssh: [user]\n" + CLUSTER, "ssh: expected a mapping, got a list", id="ssh-list"),
    pytest.param(
        "hosts:\n  - {name: a, address: x, 1: 2}\n",
        "hosts[0]: keys must be names, got 1",
        id="non-string-host-key",
    ),
]


@pytest.mark.parametrize("text, message", CLUSTER_ERRORS)
def test_bad_cluster_gives_one_exact_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cluster.yaml"
    assert cluster_error(tmp_path, text) == f"{path}: {message}"


# ---------------------------------------------------------------------------------------------
# Good files load into the expected values
# ---------------------------------------------------------------------------------------------

FULL_CLUSTER = """\
ssh:
  user: lab
  port: 22
  identity_file: ~/.ssh/id_ed25519
  known_hosts: ~/.ssh/known_hosts
  host_key_policy: accept-new
hosts:
  - name: gpu1
    address: 192.0.2.11
    gpus: 4
    slots: 8
    nic: eth0
  - name: gpu2
    address: gpu2.lab
    gpus: [0, 2]
    port: 2222
    user: root
    python: /opt/venv/bin/python
  - name: cpu1
    address: 192.0.2.13
    host_key_policy: strict
  - name: local
    address: local
"""

FULL_JOB = """\
name: resnet18-cifar10
cluster: cluster.yaml
nodes: 2
nproc_per_node: auto
backend: auto
workdir: .
command: [python, train.py, --epochs, "1", --batch, 64]
env: {OMP_NUM_THREADS: "1", SEED: 7}
secrets: [WANDB_API_KEY]
image:
  base: python:3.11-slim
  requirements: requirements.txt
runtime: docker
rdzv_port: 29500
max_restarts: 0
timeout: 1h30m
scaling: [1, 2, 3]
"""


def test_full_cluster_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster.yaml", FULL_CLUSTER)
    defaults = SshSettings(
        user="lab", port=22, identity_file="~/.ssh/id_ed25519", known_hosts="~/.ssh/known_hosts", host_key_policy="accept-new"
    )
    assert load_cluster(path) == ClusterSpec(
        path=path,
        hosts=(
            Host(name="gpu1", address="192.0.2.11", gpus=4, slots=8, nic="eth0", ssh=defaults),
            Host(
                name="gpu2",
                address="gpu2.lab",
                gpus=2,
                gpu_ids=("0", "2"),
                python="/opt/venv/bin/python",
                ssh=SshSettings(
                    user="root", port=2222, identity_file="~/.ssh/id_ed25519", known_hosts="~/.ssh/known_hosts",
                    host_key_policy="accept-new",
                ),
            ),
            Host(
                name="cpu1",
                address="192.0.2.13",
                ssh=SshSettings(
                    user="lab", port=22, identity_file="~/.ssh/id_ed25519", known_hosts="~/.ssh/known_hosts",
                    host_key_policy="strict",
                ),
            ),
            Host(name="local", address="local", ssh=defaults),
        ),
    )


def test_cluster_ssh_defaults_when_no_ssh_section(tmp_path: Path) -> None:
    cluster = hosts_of(tmp_path, CLUSTER)
    assert cluster.hosts == (Host(name="a", address="192.0.2.1", ssh=SshSettings()),)
    # what the inventory leaves out comes from ~/.ssh/config and OpenSSH's defaults when connecting
    assert SshSettings() == SshSettings(user=None, port=None, identity_file=None, known_hosts=None, host_key_policy="strict")
    assert cluster.label == str(tmp_path / "cluster.yaml")


def test_host_gpu_ids_as_strings(tmp_path: Path) -> None:
    cluster = hosts_of(tmp_path, "hosts:\n  - {name: a, address: x, gpus: [GPU-5c1c2d3e-aaaa-4b2c-9d1e-0123456789ab, 1]}\n")
    assert (cluster.hosts[0].gpus, cluster.hosts[0].gpu_ids) == (2, ("GPU-5c1c2d3e-aaaa-4b2c-9d1e-0123456789ab", "1"))


def test_local_host(tmp_path: Path) -> None:
    cluster = hosts_of(tmp_path, "hosts:\n  - {name: box, address: local}\n")
    assert cluster.hosts[0].is_local
    assert not hosts_of(tmp_path, CLUSTER).hosts[0].is_local


def test_local_cluster() -> None:
    cluster = local_cluster(cpus=6, gpus=1)
    assert cluster == ClusterSpec(path=None, hosts=(Host(name="local", address="local", gpus=1, slots=6),))
    assert cluster.label == "--local"


def test_full_job_loads(tmp_path: Path) -> None:
    write(tmp_path, "requirements.txt", "torch\n")
    path = write(tmp_path, "job.yaml", FULL_JOB)
    assert load_job(path) == JobSpec(
        path=path,
        name="resnet18-cifar10",
        cluster=tmp_path / "cluster.yaml",
        command=("python", "train.py", "--epochs", "1", "--batch", "64"),
        workdir=tmp_path.resolve(),
        nodes=2,
        nproc_per_node="auto",
        backend="auto",
        env={"OMP_NUM_THREADS": "1", "SEED": "7"},
        secrets=("WANDB_API_KEY",),
        image=ImageSpec(base="python:3.11-slim", requirements=tmp_path / "requirements.txt"),
        runtime="docker",
        rdzv_port=29500,
        max_restarts=0,
        timeout_s=5400.0,
        scaling=(1, 2, 3),
    )


def test_minimal_job_takes_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "My Project!"
    path = write(folder, "job.yaml", "command: [python, -c, 'print(1)', 3]\n")
    assert load_job(path) == JobSpec(
        path=path,
        name="My-Project-",
        cluster=None,
        command=("python", "-c", "print(1)", "3"),
        workdir=folder.resolve(),
        nodes=None,
        nproc_per_node="auto",
        backend="auto",
        env={},
        secrets=(),
        image=ImageSpec(base="python:3.11-slim", requirements=None),
        runtime="docker",
        rdzv_port=None,  # 29500 on a lab; a free port for a one-box run
        max_restarts=0,
        timeout_s=None,
        scaling=(),
    )


@pytest.mark.parametrize("folder, name", [("resnet", "resnet"), (".hidden", "hidden"), ("a b", "a-b"), ("...", "job")])
def test_default_name_from_folder(tmp_path: Path, folder: str, name: str) -> None:
    path = write(tmp_path / folder, "job.yaml", JOB)
    assert load_job(path).name == name


def test_null_values_take_defaults(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, "job.yaml", JOB + "nodes:\nnproc_per_node:\ntimeout:\nname:\n"))
    assert (job.nodes, job.nproc_per_node, job.timeout_s, job.name) == (None, "auto", None, tmp_path.name)


def test_workdir_and_paths_resolved_relative_to_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "jobs" / "src").mkdir(parents=True)
    write(tmp_path / "jobs" / "src", "reqs.txt", "")
    path = write(tmp_path / "jobs", "job.yaml", JOB + "workdir: src\ncluster: ../lab.yaml\nimage: {requirements: src/reqs.txt}\n")
    job = load_job(path)
    assert job.workdir == (tmp_path / "jobs" / "src").resolve()
    assert job.workdir.is_absolute()
    assert job.cluster is not None and job.cluster.resolve() == (tmp_path / "lab.yaml").resolve()
    assert job.image.requirements == tmp_path / "jobs" / "src" / "reqs.txt"

    up = load_job(write(tmp_path / "jobs", "job2.yaml", JOB + "workdir: ../data\n"))
    assert up.workdir == (tmp_path / "data").resolve()


def test_workdir_absolute(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    job = load_job(write(tmp_path / "jobs", "job.yaml", JOB + f"workdir: {tmp_path / 'code'}\n"))
    assert job.workdir == (tmp_path / "code").resolve()


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("2d", 172800.0), ("45", 45.0), ("1.5", 1.5)],
)
def test_job_timeout_forms(tmp_path: Path, text: str, seconds: float) -> None:
    assert load_job(write(tmp_path, "job.yaml", JOB + f"timeout: {text}\n")).timeout_s == seconds


def test_job_timeout_quoted_number(tmp_path: Path) -> None:
    assert load_job(write(tmp_path, "job.yaml", JOB + "timeout: '120'\n")).timeout_s == 120.0


def test_job_timeout_nan_is_refused(tmp_path: Path) -> None:
    message = job_error(tmp_path, JOB + "timeout: .nan\n")
    assert message == f"{tmp_path / 'job.yaml'}: timeout: expected a duration such as 90s, 30m, 1h or 1h30m, got nan"


# ---------------------------------------------------------------------------------------------
# fields helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90", 90.0),
        ("0", 0.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1d2h3m4s", 93784.0),
        (" 5m ", 300.0),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("h", None),
        ("1.5h", None),
        ("1m30", None),
        ("30s1m", None),
        ("-5", None),
        ("5 m", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "name, choices, expected",
    [
        ("nproc", ["nodes", "nproc_per_node", "backend"], "nproc_per_node"),
        ("backnd", ["nodes", "nproc_per_node", "backend"], "backend"),
        ("zzz", ["nodes", "nproc_per_node", "backend"], None),
        ("no", ["nodes", "nproc_per_node"], None),
    ],
)
def test_suggest(name: str, choices: list[str], expected: str | None) -> None:
    assert suggest(name, choices) == expected


# ---------------------------------------------------------------------------------------------
# select_hosts and backend_for: the job checked against an inventory
# ---------------------------------------------------------------------------------------------

FOUR_HOSTS = (
    "hosts:\n"
    "  - {name: d, address: 192.0.2.4}\n"
    "  - {name: b, address: 192.0.2.2}\n"
    "  - {name: c, address: 192.0.2.3}\n"
    "  - {name: a, address: 192.0.2.1}\n"
)
GPU_HOSTS = "hosts:\n  - {name: g1, address: 192.0.2.1, gpus: 4}\n  - {name: g2, address: 192.0.2.2, gpus: 2}\n"
MIXED_HOSTS = "hosts:\n  - {name: g1, address: 192.0.2.1, gpus: 4}\n  - {name: c1, address: 192.0.2.2, gpus: 0}\n"


def pair(tmp_path: Path, job_text: str, cluster_text: str) -> tuple[JobSpec, ClusterSpec]:
    return load_job(write(tmp_path, "job.yaml", job_text)), load_cluster(write(tmp_path, "cluster.yaml", cluster_text))


def test_select_hosts_takes_the_first_n_in_inventory_order(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "nodes: 3\n", FOUR_HOSTS)
    assert [h.name for h in select_hosts(job, cluster)] == ["d", "b", "c"]
    assert [h.name for h in select_hosts(job, cluster, 2, "--nodes")] == ["d", "b"]
    assert [h.name for h in select_hosts(job, cluster, 4, "--nodes")] == ["d", "b", "c", "a"]


def test_select_hosts_default_is_all(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB, FOUR_HOSTS)
    assert select_hosts(job, cluster) == cluster.hosts


def test_nodes_more_than_inventory(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "nodes: 6\n", FOUR_HOSTS)
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster)
    assert str(info.value) == f"{tmp_path / 'job.yaml'}: nodes: 6 is more than the 4 hosts in {tmp_path / 'cluster.yaml'}"


def test_nodes_more_than_a_one_host_inventory(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "nodes: 2\n", CLUSTER)
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster)
    assert str(info.value) == f"{tmp_path / 'job.yaml'}: nodes: 2 is more than the 1 host in {tmp_path / 'cluster.yaml'}"


def test_nodes_override_label(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "nodes: 1\n", FOUR_HOSTS)
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster, 5, "--nodes")
    assert str(info.value) == f"--nodes: 5 is more than the 4 hosts in {tmp_path / 'cluster.yaml'}"


def test_nodes_more_than_local_inventory(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, "job.yaml", JOB + "nodes: 2\n"))
    with pytest.raises(SpecError) as info:
        select_hosts(job, local_cluster(cpus=4, gpus=0))
    assert str(info.value) == f"{tmp_path / 'job.yaml'}: nodes: 2 is more than the 1 host in --local"


def test_nccl_on_cpu_host(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "backend: nccl\n", MIXED_HOSTS)
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster)
    assert str(info.value) == (
        f"{tmp_path / 'job.yaml'}: backend: nccl needs GPUs, but host 'c1' in {tmp_path / 'cluster.yaml'} has gpus: 0; use gloo or auto"
    )


def test_nccl_on_cpu_host_not_selected_is_fine(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "backend: nccl\nnodes: 1\n", MIXED_HOSTS)
    assert [h.name for h in select_hosts(job, cluster)] == ["g1"]


@pytest.mark.parametrize("nproc, slots, message", [
    (1024, "", "nproc_per_node: 1024 is more than 8 per core of this machine's 2 (host 'box' in {cluster} gives no slots, "
               "so its cores bound it)"),
    (17, "", "nproc_per_node: 17 is more than 8 per core of this machine's 2 (host 'box' in {cluster} gives no slots, "
             "so its cores bound it)"),
    (16, "", None),
    (5, ", slots: 4", "nproc_per_node: 5 is more than the 4 slot(s) of host 'box' in {cluster}"),
    (32, ", slots: 32", None),  # slots the inventory gives are the bound, even above 8 per core
])
def test_nproc_bounded_by_a_local_hosts_slots_or_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nproc: int,
                                                       slots: str, message: str | None) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    job, cluster = pair(tmp_path, JOB + f"nproc_per_node: {nproc}\n", f"hosts:\n  - {{name: box, address: local{slots}}}\n")
    if message is None:
        assert [h.name for h in select_hosts(job, cluster)] == ["box"]
        return
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster)
    assert str(info.value) == f"{tmp_path / 'job.yaml'}: " + message.format(cluster=tmp_path / "cluster.yaml")


def test_nproc_more_than_gpus_with_nccl(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "nproc_per_node: 3\nbackend: nccl\n", GPU_HOSTS)
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster)
    assert str(info.value) == (
        f"{tmp_path / 'job.yaml'}: nproc_per_node: 3 is more than the 2 GPUs of host 'g2'; nccl needs one GPU per process"
    )


def test_nproc_more_than_gpus_with_auto_backend(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "nproc_per_node: 3\n", GPU_HOSTS)
    with pytest.raises(SpecError) as info:
        select_hosts(job, cluster)
    assert str(info.value) == (
        f"{tmp_path / 'job.yaml'}: nproc_per_node: 3 is more than the 2 GPUs of host 'g2'; nccl needs one GPU per process"
    )


def test_nproc_more_than_gpus_with_gloo_is_fine(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "nproc_per_node: 3\nbackend: gloo\n", GPU_HOSTS)
    assert len(select_hosts(job, cluster)) == 2


def test_nproc_within_gpus_with_nccl(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB + "nproc_per_node: 2\nbackend: nccl\n", GPU_HOSTS)
    assert len(select_hosts(job, cluster)) == 2


@pytest.mark.parametrize(
    "backend, cluster_text, expected",
    [
        ("auto", GPU_HOSTS, "nccl"),
        ("auto", MIXED_HOSTS, "gloo"),
        ("auto", FOUR_HOSTS, "gloo"),
        ("gloo", GPU_HOSTS, "gloo"),
        ("nccl", GPU_HOSTS, "nccl"),
    ],
)
def test_backend_for(tmp_path: Path, backend: str, cluster_text: str, expected: str) -> None:
    job, cluster = pair(tmp_path, JOB + f"backend: {backend}\n", cluster_text)
    assert backend_for(job, cluster.hosts) == expected


def test_backend_for_no_hosts_is_gloo(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, "job.yaml", JOB))
    assert backend_for(job, ()) == "gloo"


def test_backend_for_first_gpu_host_only(tmp_path: Path) -> None:
    job, cluster = pair(tmp_path, JOB, MIXED_HOSTS)
    assert backend_for(job, cluster.hosts[:1]) == "nccl"


def test_shown_path_is_normalised_unless_a_link_takes_dotdot_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.spec.yamlfile import shown_path

    monkeypatch.chdir(tmp_path)
    write(tmp_path, "jobs/x/job.yaml", JOB)
    write(tmp_path, "other/sub/keep", "")
    write(tmp_path, "other/job.yaml", JOB)
    (tmp_path / "link").symlink_to(tmp_path / "other" / "sub")
    assert shown_path(Path("jobs/x/../x/./job.yaml")) == Path("jobs/x/job.yaml")
    assert shown_path(tmp_path / "jobs" / "x" / ".." / ".." / "cluster.yaml") == tmp_path / "cluster.yaml"
    assert shown_path(Path("link/../job.yaml")) == Path("link/../job.yaml")  # the OS reads other/job.yaml
    assert load_job(Path("link/../job.yaml")).path == Path("link/../job.yaml")


@pytest.mark.parametrize("given, size", [("1GB", 10**9), ("500MB", 500 * 10**6), ("1.5GiB", int(1.5 * 1024**3)),
                                         ("4kB", 4000), ("4KiB", 4096), (123, 123), ("7", 7)])
def test_outputs_limit_takes_sizes_with_units(tmp_path: Path, given, size) -> None:
    (tmp_path / "job.yaml").write_text(JOB + f"outputs_limit: {given}\noutputs: ['*.pt', 'out/*']\n")
    job = load_job(tmp_path / "job.yaml")
    assert job.outputs_limit == size and job.outputs == ("*.pt", "out/*")
