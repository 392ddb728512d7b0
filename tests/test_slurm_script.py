"""The batch script of a Slurm run, pure: golden files for each way a cluster runs the job (docker,
runtime: host, apptainer, pyxis, a GPU inventory), and what must hold in every one of them.

apptainer and pyxis cannot run on these machines: their scripts are checked here only. A golden
file in tests/golden/slurm/ is the script with this test's tmp_path replaced by <TMP>; delete one to
regenerate it (the test that writes it fails once, so that it is read before it is committed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.backends.slurm import slurm_plan
from launcher.plan import PlanOptions
from launcher.spec import load_cluster, load_job, select_hosts

GOLDEN = Path(__file__).resolve().parent / "golden" / "slurm"
IMAGE_ID = "sha256:" + "ab" * 32
RUN_ID = "probe-20260101-000000-abcd"

JOB = """\
name: probe
nodes: 2
nproc_per_node: {nproc}
runtime: {runtime}
command: [python, train.py, --epochs, "1", "{{launch.node0}}"]
env: {{OMP_NUM_THREADS: "1"}}
secrets: [WANDB_API_KEY]
timeout: 10m
max_restarts: {restarts}
"""

CLUSTER = """\
slurm:
  login: local
  shared_dir: /shared/me/launch
  partition: debug
  account: proj1
  cpus_per_node: 8
  gpus_per_node: {gpus}
  nic: eth0
  python: /shared/venv/bin/python
  container: {container}
  sbatch_args: [--qos=normal]
"""

CASES = {
    "docker": dict(runtime="docker", container="docker", gpus=0, nproc=2, restarts=0),
    "host": dict(runtime="host", container="docker", gpus=0, nproc=2, restarts=1),
    "apptainer": dict(runtime="docker", container="apptainer", gpus=0, nproc=2, restarts=0),
    "pyxis": dict(runtime="docker", container="pyxis", gpus=0, nproc=2, restarts=0),
    "gpu": dict(runtime="docker", container="docker", gpus=4, nproc="auto", restarts=0),
}


def script_for(tmp_path: Path, case: str):
    values = CASES[case]
    (tmp_path / "job.yaml").write_text(JOB.format(**values))
    (tmp_path / "cluster.yaml").write_text(CLUSTER.format(**values))
    (tmp_path / "train.py").write_text("print('hi')\n")
    job = load_job(tmp_path / "job.yaml")
    cluster = load_cluster(tmp_path / "cluster.yaml")
    hosts = select_hosts(job, cluster)
    options = PlanOptions(run_dir=str(tmp_path / "runs" / RUN_ID), local_user="me", workdir_hash="feedc0ffee123456",
                          image="launch/probe:0123456789abcdef" if values["runtime"] == "docker" else None)
    image_id = IMAGE_ID if values["runtime"] == "docker" else None
    return slurm_plan(cluster.slurm, job, hosts, RUN_ID, options, image_id)


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_script_matches_its_golden_file(tmp_path: Path, case: str) -> None:
    _, script = script_for(tmp_path, case)
    text = script.replace(str(tmp_path), "<TMP>")
    path = GOLDEN / f"{case}.sbatch"
    if not path.exists():
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        pytest.fail(f"golden file {path} was missing and has been written; check it and rerun")
    assert text == path.read_text(), f"the batch script differs from {path} (delete it to regenerate)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_script_is_valid_bash_with_one_task_per_node(tmp_path: Path, case: str) -> None:
    plan, script = script_for(tmp_path, case)
    if shutil.which("bash"):
        checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr
    header = [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert "--nodes=2" in header and "--ntasks-per-node=1" in header, "one torchrun per node, never N x N ranks"
    assert "--time=10:00" in header and "--signal=B:USR2@60" in header
    assert header[-1] == "--qos=normal", "the inventory's sbatch_args come last, as given"
    assert ("--requeue" in header) == (CASES[case]["restarts"] > 0)
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun and "--ntasks-per-node=1" in srun
    # the rendezvous is on the allocation's first node, at a port derived from the job id
    assert "--master-addr=\"${LAUNCH_ADDR_0}\"" in script and "--master-port=\"${LAUNCH_RDZV_PORT}\"" in script
    assert "SLURM_JOB_ID % 10000" in script
    assert f"--rdzv-id={RUN_ID}" in script
    assert script.count("--node-rank=") == 2 and "--node-rank=1" in script
    # the job's own command is passed as given: a placeholder's text in it is left alone
    assert "train.py --epochs 1 '{launch.node0}'" in script
    assert all(node.nproc == (4 if case == "gpu" else 2) for node in plan.nodes)


def test_a_gpu_inventory_gives_gpus_per_node_nccl_and_a_rank_per_gpu(tmp_path: Path) -> None:
    plan, script = script_for(tmp_path, "gpu")
    assert "#SBATCH --gpus-per-node=4" in script
    assert plan.backend == "nccl" and plan.world_size == 8
    assert "LAUNCH_BACKEND=nccl" in script and "NCCL_SOCKET_IFNAME=eth0" in script
    assert "--gpus all" in script


def test_secret_values_never_reach_the_script(tmp_path: Path) -> None:
    for case in CASES:
        folder = tmp_path / case
        folder.mkdir()
        _, script = script_for(folder, case)
        assert "LAUNCH_SECRETS_FILE=" in script, "the rank wrapper reads them from the node's 0600 file"
        assert not re.search(r"WANDB_API_KEY=(?!\*)", script)


def test_containers_run_the_image_from_the_shared_folder(tmp_path: Path) -> None:
    tar, sif, sqsh = (f"/shared/me/launch/images/{'ab' * 32}{suffix}" for suffix in (".tar", ".sif", ".sqsh"))
    (tmp_path / "d").mkdir()
    _, docker = script_for(tmp_path / "d", "docker")
    assert f"docker load --quiet --input {tar}" in docker and f"= {IMAGE_ID} ]" in docker
    assert "--forward-preempt" in docker, "Slurm's signal reaches a Docker container only through its supervisor"
    (tmp_path / "a").mkdir()
    _, apptainer = script_for(tmp_path / "a", "apptainer")
    assert "apptainer exec --cleanenv" in apptainer and "--bind /shared/me/launch/runs/" in apptainer and sif in apptainer and "--forward-preempt" not in apptainer
    (tmp_path / "p").mkdir()
    _, pyxis = script_for(tmp_path / "p", "pyxis")
    assert f"--container-image={sqsh}" in pyxis and "--container-mounts=" in pyxis and "cd /launch/run && exec env" in pyxis


def test_runtime_host_runs_the_inventorys_python(tmp_path: Path) -> None:
    plan, script = script_for(tmp_path, "host")
    assert "export PATH=/shared/venv/bin:\"$PATH\"" in script
    assert "/shared/venv/bin/python -m launcher.node.supervisor" in script
    assert "docker" not in script
    assert plan.nodes[0].node_dir == f"/shared/me/launch/runs/{RUN_ID}/node0"
    assert plan.nodes[1].env["LAUNCH_CHECKPOINT_DIR"] == f"/shared/me/launch/jobs/probe/runs/node1/{RUN_ID}/checkpoints"


def test_a_script_submitted_again_by_hand_runs_without_the_lease(tmp_path: Path) -> None:
    _, script = script_for(tmp_path, "docker")
    assert '${LAUNCH_LEASE_S:+--lease "$LAUNCH_LEASE_S"}' in script
    assert "--lease 10" not in script
