"""The pure planner against golden plans: per node, the exact command and environment.

A golden file in tests/golden/ holds a plan's JSON and its `--dry-run` text, with this test's
tmp_path replaced by <TMP>. Delete a golden file to regenerate it; the test that writes it fails
once so that the new file gets read before it is committed.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from launcher.errors import SpecError
from launcher.plan import LaunchPlan, PlanOptions, make_plan
from launcher.spec import Host, JobSpec, load_cluster, load_job, select_hosts

GOLDEN = Path(__file__).resolve().parent / "golden"
OPTIONS = PlanOptions(run_dir="/runs/RUN", local_python="/usr/bin/python3", local_cpus=4, workdir_hash="feedc0ffee123456")
SECRET_VALUE = "s3cr3t-do-not-print"


def setup(tmp_path: Path, job_text: str, cluster_text: str) -> tuple[JobSpec, tuple[Host, ...]]:
    """A job in tmp_path/job/ and its inventory, loaded as the CLI would."""
    folder = tmp_path / "job"
    folder.mkdir(exist_ok=True)
    (folder / "job.yaml").write_text(job_text)
    (folder / "cluster.yaml").write_text(cluster_text)
    job = load_job(folder / "job.yaml")
    return job, select_hosts(job, load_cluster(folder / "cluster.yaml"))


def normalised(plan: LaunchPlan, tmp_path: Path) -> dict[str, Any]:
    """The plan's JSON and dry-run text, with this run's temporary folder as <TMP>."""
    text = json.dumps({"plan": plan.to_json(), "dry_run": plan.describe().splitlines()}, indent=2, sort_keys=True)
    for prefix in sorted({str(tmp_path.resolve()), str(tmp_path)}, key=len, reverse=True):
        text = text.replace(prefix, "<TMP>")
    return json.loads(text)


def check_golden(name: str, data: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    if not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        pytest.fail(f"golden file {path} was missing and has been written; check it and rerun")
    assert data == json.loads(path.read_text()), f"plan differs from {path} (delete it to regenerate)"


# ---------------------------------------------------------------------------------------------
# One box
# ---------------------------------------------------------------------------------------------

LOCAL_JOB = """\
name: probe-local
runtime: host
command: [python, train.py, --epochs, "1"]
env: {OMP_NUM_THREADS: "1"}
"""


def test_local_auto_nproc_from_local_cpus(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, LOCAL_JOB, "hosts:\n  - {name: box, address: local}\n")
    plan = make_plan(job, hosts, "20240101-000000-local", OPTIONS)

    assert (plan.nnodes, plan.world_size, plan.backend, plan.master_addr, plan.master_port) == (1, 4, "gloo", "127.0.0.1", 29500)
    (node,) = plan.nodes
    assert (node.host, node.node_rank, node.nproc, node.first_rank, node.image) == ("box", 0, 4, 0, None)
    assert node.argv[0] == "/usr/bin/python3"
    assert node.argv[-4:] == ("python", "train.py", "--epochs", "1")
    assert node.cwd == "jobs/probe-local/runs/box/20240101-000000-local/work", "the run's own working directory, never the source folder"
    assert node.state_dir == "jobs/probe-local/runs/box/20240101-000000-local"
    assert node.env["LAUNCH_CHECKPOINT_DIR"] == "jobs/probe-local/runs/box/20240101-000000-local/checkpoints"
    assert node.argv[node.argv.index("--code-from") + 1] == str((tmp_path / "job").resolve())
    assert "--resume-from" not in node.argv and plan.resumed_from is None
    assert node.node_env["LAUNCH_ATTEMPT"].startswith("0") and node.node_env["PATH"] == "/usr/bin:$PATH"
    assert (node.log_dir, node.metrics_dir) == ("/runs/RUN/logs/box", "/runs/RUN/metrics")
    assert node.env["LAUNCH_RUN_ID"] == "20240101-000000-local"
    assert node.env["LAUNCH_METRICS_DIR"] == "/runs/RUN/metrics"
    check_golden("local_auto", normalised(plan, tmp_path))


def test_local_slots_win_over_local_cpus(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, LOCAL_JOB, "hosts:\n  - {name: box, address: local, slots: 3}\n")
    plan = make_plan(job, hosts, "r", OPTIONS)
    assert (plan.nodes[0].nproc, plan.world_size) == (3, 3)


def test_local_fixed_nproc(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, LOCAL_JOB + "nproc_per_node: 2\n", "hosts:\n  - {name: box, address: local}\n")
    plan = make_plan(job, hosts, "r", OPTIONS)
    assert (plan.nodes[0].nproc, plan.world_size) == (2, 2)
    assert "--nproc-per-node=2" in plan.nodes[0].argv


LOCAL_SECRETS_JOB = """\
name: probe-secrets
runtime: host
command: [python, train.py]
env: {OMP_NUM_THREADS: "2"}
secrets: [WANDB_API_KEY, HF_TOKEN]
rdzv_port: 29611
max_restarts: 1
timeout: 30m
"""
LOCAL_GPU_CLUSTER = "hosts:\n  - {name: box, address: local, gpus: [0, 2], nic: eth0}\n"


def test_local_with_secrets_nic_and_gpu_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET_VALUE)
    monkeypatch.setenv("HF_TOKEN", SECRET_VALUE)
    job, hosts = setup(tmp_path, LOCAL_SECRETS_JOB, LOCAL_GPU_CLUSTER)
    plan = make_plan(job, hosts, "20240101-000000-secrets", OPTIONS)

    (node,) = plan.nodes
    assert plan.backend == "nccl"
    assert (node.nproc, plan.world_size, plan.timeout_s, plan.master_port) == (2, 2, 1800.0, 29611)
    assert node.env["WANDB_API_KEY"] == node.env["HF_TOKEN"] == "***"
    assert node.secrets == ("WANDB_API_KEY", "HF_TOKEN")
    assert node.env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert node.env["GLOO_SOCKET_IFNAME"] == node.env["NCCL_SOCKET_IFNAME"] == "eth0"
    # the node supervisors restart the whole group; torchrun itself never restarts on its own
    supervisor, torchrun = node.argv[: node.argv.index("--")], node.argv[node.argv.index("--") + 1 :]
    assert supervisor[supervisor.index("--max-restarts") + 1] == "1" and "--max-restarts=0" in torchrun

    data = normalised(plan, tmp_path)
    assert SECRET_VALUE not in json.dumps(data)
    assert SECRET_VALUE not in plan.describe()
    check_golden("local_secrets_nic_gpus", data)


def test_describe_shows_secrets_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET_VALUE)
    job, hosts = setup(tmp_path, LOCAL_SECRETS_JOB, LOCAL_GPU_CLUSTER)
    text = make_plan(job, hosts, "r", OPTIONS).describe()
    lines = text.splitlines()
    assert "  WANDB_API_KEY='***'" in lines
    assert "  HF_TOKEN='***'" in lines
    assert SECRET_VALUE not in text
    assert lines[0] == "run r: 1 node(s), world size 2, backend nccl, rendezvous 127.0.0.1:29611"


def test_gloo_on_gpu_host_pins_only_the_gloo_interface(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, LOCAL_SECRETS_JOB.replace("secrets: [WANDB_API_KEY, HF_TOKEN]\n", "backend: gloo\n"), LOCAL_GPU_CLUSTER)
    env = make_plan(job, hosts, "r", OPTIONS).nodes[0].env
    assert env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert "NCCL_SOCKET_IFNAME" not in env


def test_job_env_cannot_set_launch_variables(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        setup(tmp_path, LOCAL_JOB.replace('{OMP_NUM_THREADS: "1"}', "{LAUNCH_CHECKPOINT_DIR: mine}"), "hosts:\n  - {name: box, address: local}\n")
    assert str(info.value).endswith("job.yaml: env.LAUNCH_CHECKPOINT_DIR: names starting with LAUNCH_ are set by the launcher; choose another name")


# ---------------------------------------------------------------------------------------------
# Command lines: quoted once, and reversibly
# ---------------------------------------------------------------------------------------------

NASTY = "$(touch /tmp/x) \"quoted\" 'a b'"


def test_command_line_round_trips_through_shlex(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, LOCAL_JOB, "hosts:\n  - {name: box, address: local}\n")
    job = replace(job, command=("python", "train.py", "--tag", NASTY, "a b\"c", "", "*", "x;y"))
    node = make_plan(job, hosts, "r", OPTIONS).nodes[0]
    assert node.argv[-8:] == job.command
    assert shlex.split(node.command_line()) == list(node.argv)
    assert shlex.split(make_plan(job, hosts, "r", OPTIONS).describe().splitlines()[-1]) == list(node.argv)


def test_command_from_yaml_arrives_unchanged(tmp_path: Path) -> None:
    yaml_arg = json.dumps(NASTY)  # a JSON string is a valid YAML flow scalar
    job, hosts = setup(tmp_path, f"runtime: host\ncommand: [python, train.py, {yaml_arg}]\n", "hosts:\n  - {name: box, address: local}\n")
    node = make_plan(job, hosts, "r", OPTIONS).nodes[0]
    assert node.argv[-1] == NASTY
    assert shlex.split(node.command_line())[-1] == NASTY


def test_cwd_with_spaces_is_quoted_in_describe(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, LOCAL_JOB, "hosts:\n  - {name: box, address: local}\n")
    (tmp_path / "my code").mkdir()
    job = replace(job, workdir=tmp_path / "my code")
    lines = make_plan(job, hosts, "r", replace(OPTIONS, local_jobs=str(tmp_path / "my runs"))).describe().splitlines()
    cd = next(line for line in lines if line.startswith("  cd "))
    assert shlex.split(cd) == ["cd", str(tmp_path / "my runs/probe-local/runs/box/r/work")]
    command = shlex.split(lines[-1])
    assert command[command.index("--code-from") + 1] == str(tmp_path / "my code")


def test_a_resumed_run_starts_from_copies_of_the_earlier_runs_folders(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB, THREE_MIXED)
    earlier = {"gpu1": "/var/tmp/launch-jobs-launch/scaling-test/gpu1/old", "cpu1": "/var/tmp/launch-jobs-lab/scaling-test/cpu1/old"}
    plan = make_plan(job, hosts, "r2", replace(REMOTE_OPTIONS, resume_from="old", resume_dirs=earlier))
    assert plan.resumed_from == "old" and plan.to_json()["resumed_from"] == "old"
    gpu1, cpu1, cpu2 = plan.nodes
    assert gpu1.resume_dir == earlier["gpu1"] and cpu2.resume_dir is None, "a host the earlier run did not use starts empty"
    assert f"{earlier['gpu1']}:/launch/resume:ro" in gpu1.argv and gpu1.argv[gpu1.argv.index("--resume-from") + 1] == "/launch/resume"
    assert "--resume-from" not in cpu2.argv
    assert f"{gpu1.state_dir}/work:/workspace" in gpu1.argv and f"{gpu1.state_dir}/checkpoints:/launch/checkpoints" in gpu1.argv
    assert gpu1.state_dir.endswith("/scaling-test/runs/gpu1/r2") and gpu1.env["LAUNCH_CHECKPOINT_DIR"] == "/launch/checkpoints"
    assert "resumes from run old" in plan.describe()


# ---------------------------------------------------------------------------------------------
# Several remote hosts (runtime: docker)
# ---------------------------------------------------------------------------------------------

REMOTE_OPTIONS = replace(OPTIONS, image="launch/scaling-test:0123456789abcdef", nics={"cpu2": "ens5"})
REMOTE_JOB = """\
name: scaling-test
runtime: docker
command: [python, train.py, --epochs, "1"]
env: {OMP_NUM_THREADS: "1"}
"""
THREE_MIXED = """\
hosts:
  - {name: gpu1, address: 192.0.2.11, gpus: 2, nic: eth0}
  - {name: cpu1, address: 192.0.2.12, slots: 8, python: /opt/venv/bin/python}
  - {name: cpu2, address: cpu2.lab}
"""
THREE_GPU = """\
hosts:
  - {name: g1, address: 192.0.2.21, gpus: 4, nic: ib0}
  - {name: g2, address: 192.0.2.22, gpus: 4, nic: ib0}
  - {name: g3, address: 192.0.2.23, gpus: [1, 3], nic: ib0}
"""


def test_three_remote_hosts_mixed(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB, THREE_MIXED)
    plan = make_plan(job, hosts, "20240101-000000-mixed", REMOTE_OPTIONS)

    assert (plan.nnodes, plan.backend, plan.master_addr, plan.world_size) == (3, "gloo", "192.0.2.11", None)
    assert [n.node_rank for n in plan.nodes] == [0, 1, 2]
    assert [n.nproc for n in plan.nodes] == [2, 8, "auto"]
    assert [n.first_rank for n in plan.nodes] == [0, 2, 10]
    assert [n.argv[:2] for n in plan.nodes] == [("docker", "run")] * 3
    assert [n.container for n in plan.nodes] == [f"launch-20240101-000000-mixed-{h}" for h in ("gpu1", "cpu1", "cpu2")]
    assert [n.env.get("GLOO_SOCKET_IFNAME") for n in plan.nodes] == ["eth0", None, "ens5"]
    for n in plan.nodes:
        assert n.image == "launch/scaling-test:0123456789abcdef" and n.image in n.argv
        assert n.node_dir == f"/tmp/launch-runs-launch/20240101-000000-mixed/{n.host}" and n.cwd == "/workspace"
        assert "--volume" in n.argv and f"{n.node_dir}:/launch/run" in n.argv
        assert n.env["LAUNCH_METRICS_DIR"] == "/launch/run/metrics"
        assert f"--local-addr={n.address}" in n.argv
        assert "--nnodes=3" in n.argv
        assert f"--node-rank={n.node_rank}" in n.argv
        assert f"--nproc-per-node={n.nproc}" in n.argv
        assert "--master-addr=192.0.2.11" in n.argv
        assert "--rdzv-id=20240101-000000-mixed" in n.argv
    assert plan.describe().splitlines()[0] == (
        "run 20240101-000000-mixed: 3 node(s), world size decided by the nodes, backend gloo, rendezvous 192.0.2.11:29500"
    )
    check_golden("remote_three_hosts_mixed", normalised(plan, tmp_path))


def test_three_remote_gpu_hosts(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB, THREE_GPU)
    plan = make_plan(job, hosts, "20240101-000000-gpu", REMOTE_OPTIONS)

    assert (plan.backend, plan.master_addr, plan.world_size) == ("nccl", "192.0.2.21", 10)
    assert [n.nproc for n in plan.nodes] == [4, 4, 2]
    assert [n.first_rank for n in plan.nodes] == [0, 4, 8]
    assert [n.argv[n.argv.index("--gpus") + 1] for n in plan.nodes] == ["all", "all", '"device=1,3"']
    assert all(n.env["NCCL_SOCKET_IFNAME"] == "ib0" for n in plan.nodes)
    check_golden("remote_three_gpu_hosts", normalised(plan, tmp_path))


def test_unknown_count_leaves_later_first_ranks_unknown(tmp_path: Path) -> None:
    cluster = "hosts:\n  - {name: a, address: 192.0.2.1, slots: 2}\n  - {name: b, address: 192.0.2.2}\n  - {name: c, address: 192.0.2.3, slots: 2}\n"
    job, hosts = setup(tmp_path, REMOTE_JOB, cluster)
    plan = make_plan(job, hosts, "r", REMOTE_OPTIONS)
    assert [n.nproc for n in plan.nodes] == [2, "auto", 2]
    assert [n.first_rank for n in plan.nodes] == [0, 2, None]
    assert plan.world_size is None


def test_fixed_nproc_on_remote_hosts(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB + "nproc_per_node: 3\n", THREE_MIXED)
    plan = make_plan(job, hosts, "r", REMOTE_OPTIONS)
    assert [n.nproc for n in plan.nodes] == [3, 3, 3]
    assert [n.first_rank for n in plan.nodes] == [0, 3, 6]
    assert plan.world_size == 9


def test_nodes_limits_the_plan(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB + "nodes: 2\n", THREE_MIXED)
    plan = make_plan(job, hosts, "r", REMOTE_OPTIONS)
    assert [n.host for n in plan.nodes] == ["gpu1", "cpu1"]
    assert plan.world_size == 10
    assert all("--nnodes=2" in n.argv for n in plan.nodes)


def test_remote_runtime_host_runs_the_hosts_python_in_a_process_group(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB.replace("runtime: docker", "runtime: host") + "secrets: [API_TOKEN]\n", THREE_MIXED)
    plan = make_plan(job, hosts, "r1", REMOTE_OPTIONS)
    node = plan.nodes[1]  # cpu1, whose inventory names its python
    assert node.image is None and node.container is None
    assert node.argv[:4] == ("setsid", "--wait", "sh", "-c")
    assert node.argv[5:7] == ("/tmp/launch-runs-launch/r1/cpu1/cpu1.pid", "/tmp/launch-runs-launch/r1/cpu1")
    assert node.pid_file == "/tmp/launch-runs-launch/r1/cpu1/cpu1.pid" and node.cwd == "/var/tmp/launch-jobs-launch/scaling-test/runs/cpu1/r1/work"
    assert node.argv[node.argv.index("--code-from") + 1] == node.workdir_copy
    assert "PYTHONPATH=/tmp/launch-runs-launch/r1/cpu1/lib" in node.argv
    assert "/opt/venv/bin/python" in node.argv and node.argv[-4:] == ("python", "train.py", "--epochs", "1")
    assert node.env["LAUNCH_SECRETS_FILE"] == "/tmp/launch-runs-launch/r1/cpu1/secrets.env" and node.env["API_TOKEN"] == "***"
    assert not any("API_TOKEN" in arg for arg in node.argv)
    assert plan.nodes[0].argv[plan.nodes[0].argv.index("-m") - 1] == "python3"


def test_secrets_stay_off_the_docker_command_line(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB + "secrets: [API_TOKEN]\n", THREE_MIXED)
    node = make_plan(job, hosts, "r", REMOTE_OPTIONS).nodes[0]
    assert node.env["API_TOKEN"] == "***" and node.env["LAUNCH_SECRETS_FILE"] == "/launch/run/secrets.env"
    assert not any("API_TOKEN" in arg for arg in node.argv)


# Plans that cannot work
# ---------------------------------------------------------------------------------------------


def test_local_mixed_with_remote_hosts_is_refused(tmp_path: Path) -> None:
    cluster = "hosts:\n  - {name: gpu1, address: 192.0.2.11}\n  - {name: here, address: local}\n"
    job, hosts = setup(tmp_path, REMOTE_JOB, cluster)
    with pytest.raises(SpecError) as info:
        make_plan(job, hosts, "r", OPTIONS)
    assert str(info.value) == (
        f"{tmp_path / 'job' / 'job.yaml'}: host 'here' has address: local, which only a one-node run can use; "
        "give it the address other hosts reach it by"
    )


def test_remote_docker_without_an_image_is_refused(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB, THREE_MIXED)
    with pytest.raises(SpecError) as info:
        make_plan(job, hosts, "r", OPTIONS)
    assert str(info.value) == f"{tmp_path / 'job' / 'job.yaml'}: runtime: docker needs the job's image tag to plan remote nodes"


def test_no_hosts_is_refused(tmp_path: Path) -> None:
    job, _ = setup(tmp_path, REMOTE_JOB, THREE_MIXED)
    with pytest.raises(SpecError) as info:
        make_plan(job, (), "r", OPTIONS)
    assert str(info.value) == f"{tmp_path / 'job' / 'job.yaml'}: no hosts to run on"


def test_plan_is_deterministic(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB, THREE_MIXED)
    assert make_plan(job, hosts, "r", REMOTE_OPTIONS) == make_plan(job, hosts, "r", REMOTE_OPTIONS)


def test_a_jobs_pythonpath_keeps_the_images_helpers_importable(tmp_path: Path) -> None:
    job, hosts = setup(tmp_path, REMOTE_JOB.replace('env: {OMP_NUM_THREADS: "1"}', "env: {PYTHONPATH: /extra}"), THREE_MIXED)
    node = make_plan(job, hosts, "r", REMOTE_OPTIONS).nodes[0]
    assert "PYTHONPATH=/opt/launch/lib:/extra" in node.argv
    assert node.env["PYTHONUNBUFFERED"] == "1"
