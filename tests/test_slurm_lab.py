"""The lab's Slurm cluster itself (tests/simslurm.py): real slurmctld and slurmd, jobs on the lab's hosts."""

from __future__ import annotations

import sys
import time
import uuid

import pytest
import yaml

import simlab

pytestmark = pytest.mark.integration

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait_for(what, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(message)


def sleeps(marker: str) -> list[int]:
    found = []
    for pid in simlab.processes_of_run(marker):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].endswith(b"sleep"):
                found.append(pid)
        except OSError:
            continue
    return found


def test_sinfo_lists_the_lab_hosts_idle(slurm) -> None:
    slurm.wait_idle()
    out = slurm.run("sinfo", "-h", "-N", "-o", "%N %P %t").stdout
    assert sorted(line.split() for line in out.splitlines()) == [[h, "lab*", "idle"] for h in ("h1", "h2", "h3")]
    assert slurm.node_address("h2") == slurm.lab.host("h2").address


def test_a_two_node_batch_job_runs_srun_on_both_nodes(slurm) -> None:
    """srun inside the batch script reaches both nodes; each writes into the shared folder, runs the
    machine's Python (the venv with torch; labs share a toolchain) and talks to its own dockerd."""
    slurm.wait_idle()
    shared = slurm.shared_dir
    tag = uuid.uuid4().hex[:8]
    script = shared / f"two-nodes-{tag}.sh"
    script.write_text(f"""#!/bin/bash
srun bash -c 'echo "node=$SLURMD_NODENAME host=$(hostname) docker=$(docker info --format {{{{.Name}}}})" \\
    > {shared}/{tag}-$SLURMD_NODENAME.txt
    {sys.executable} -c "import torch; print(torch.__version__)" >> {shared}/{tag}-$SLURMD_NODENAME.txt'
""")
    job = slurm.run("sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", f"--chdir={shared}",
                    f"--output={shared}/{tag}-%j.out", str(script)).stdout.strip()
    state = wait_for(lambda: (s := slurm.job_state(job)) in ENDED and s, 90, f"job {job} did not end")
    output = (shared / f"{tag}-{job}.out").read_text()
    assert state == "COMPLETED", output
    nodes = sorted(p.stem.removeprefix(f"{tag}-") for p in shared.glob(f"{tag}-h*.txt"))
    assert len(nodes) == 2 and set(nodes) <= {"h1", "h2", "h3"}, nodes
    for node in nodes:
        first, torch_version = (shared / f"{tag}-{node}.txt").read_text().splitlines()
        assert first == f"node={node} host=lab-{node} docker=lab-{node}", "each node's jobs reach its own dockerd"
        assert torch_version.strip()


def test_scancel_ends_a_sleeping_job_and_its_processes(slurm) -> None:
    slurm.wait_idle()
    marker = f"slurm-lab-{uuid.uuid4().hex[:8]}"  # in the environment of every process of the job
    job = slurm.run("sbatch", "--parsable", "--nodes=2", f"--export=ALL,LAUNCH_RUN_ID={marker}",
                    f"--chdir={slurm.shared_dir}", "--output=/dev/null", "--wrap", "srun sleep 600").stdout.strip()
    wait_for(lambda: len(sleeps(marker)) == 2, 60, "the job's sleeps did not start on two nodes")
    slurm.run("scancel", job)
    wait_for(lambda: not slurm.squeue(), 60, f"the queue still holds {slurm.squeue()}")
    wait_for(lambda: not simlab.processes_of_run(marker), 15, f"processes of job {job} are left")
    assert slurm.job_state(job) in ("CANCELLED", None)


def test_inventory_names_the_cluster(slurm, tmp_path) -> None:
    path = slurm.inventory(tmp_path / "slurm.yaml", partition="other", container=None)
    assert yaml.safe_load(path.read_text()) == {"slurm": {
        "login": "local", "shared_dir": str(slurm.shared_dir), "partition": "other", "cpus_per_node": 2,
        "gpus_per_node": 0}}
