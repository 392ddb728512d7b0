"""Launching on a Slurm cluster (the simulated lab's: slurmctld, a slurmd per host, a shared folder)
against submitting the same batch script by hand.

- warm: a 2-node x 1-process all-reduce job (runtime: host), its code already in the shared folder.
  Through launch: `launch job.yaml`, from start to exit (summary and logs collected). By hand: the
  run's own job.sbatch, copied for a fresh run id with its folders made, `sbatch --parsable`, then
  squeue asked every 0.1 s until the job has left it. Medians of --runs runs each, alternated.
- first line: through launch, from "submitted Slurm job" to the ranks' first line.
- cold reference (--cold): the reference job (ResNet-18, jobs/book, one short epoch) on hosts whose
  image stores lack its image (the project's CPU base, about 6 GB): the image goes to the shared
  folder and each node loads it.
Needs root and the lab's set-up (scripts/setup-lab.sh).
    .venv/bin/python bench/slurm.py [--runs 5] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import simlab  # noqa: E402
import simslurm  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from multinode import REFERENCE_ARGS, base_image  # noqa: E402

SCRIPT = ROOT / "jobs/allreduce/train.py"
BOOK = ROOT / "jobs/book"


def write_job(folder: Path, cluster: Path, name: str, command: list[str], runtime: str, base: str | None = None,
              nproc: int = 1) -> Path:
    lines = [f"name: {name}", f"cluster: {cluster}", "nodes: 2", f"nproc_per_node: {nproc}", f"runtime: {runtime}",
             f"command: {json.dumps(command)}", "env: {OMP_NUM_THREADS: '1'}", "timeout: 20m"]
    if base:
        lines.append(f"image: {{base: '{base}'}}")
    (folder / "job.yaml").write_text("\n".join(lines) + "\n")
    return folder / "job.yaml"


def launch(job: Path, runs: Path, env: dict[str, str]) -> tuple[float, float | None, str]:
    """Seconds of `launch job.yaml`, seconds from the submission to the ranks' first line, its output."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "launcher", str(job), "--runs-dir", str(runs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    submitted = first = None
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter()
        lines.append(line)
        if submitted is None and "submitted Slurm job" in line:
            submitted = now
        if first is None and submitted is not None and re.match(r"\[node\d+/\d+\] ", line):
            first = now
    proc.wait()
    wall = time.perf_counter() - start
    output = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"launch failed:\n{output[-3000:]}")
    return wall, (first - submitted) if first and submitted else None, output


def by_hand(run_dir: Path, env: dict[str, str], k: int) -> float:
    """The run's batch script for a fresh run id (its folders made first, as Slurm needs), submitted
    with sbatch; seconds until the job has left squeue."""
    plan = json.loads((run_dir / "plan.json").read_text())
    old = plan["run_id"]
    new = f"{old}-hand{k}"
    script = (run_dir / "job.sbatch").read_text().replace(old, new)
    for node in plan["nodes"]:
        for key in ("node_dir", "log_dir", "metrics_dir", "checkpoint_dir", "state_dir"):
            Path(node[key].replace(old, new)).mkdir(parents=True, exist_ok=True)
        Path(node["state_dir"].replace(old, new), "work").mkdir(exist_ok=True)
        lib = Path(node["node_dir"], "lib")
        if lib.is_dir():
            shutil.copytree(lib, Path(node["node_dir"].replace(old, new), "lib"), dirs_exist_ok=True)
    path = Path(plan["nodes"][0]["node_dir"].replace(old, new)).parent / "job.sbatch"
    path.write_text(script)
    start = time.perf_counter()
    job_id = subprocess.run(["sbatch", "--parsable", str(path)], env=env, capture_output=True, text=True,
                            check=True).stdout.strip().split(";")[0]
    while subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip():
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    state = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    if "JobState=COMPLETED" not in state:
        raise SystemExit(f"the batch script by hand did not complete: {state[:500]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="also a cold launch of the reference job (about 6 GB)")
    args = parser.parse_args()
    lab = simlab.Lab(hosts=3, prefix="blab", subnet=31).up()
    cluster = simslurm.SlurmCluster(lab).up()
    env = dict(os.environ, **cluster.env)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
            folder = Path(tmp)
            shutil.copy(SCRIPT, folder / SCRIPT.name)
            inventory = cluster.inventory(folder / "cluster.yaml", python=sys.executable)
            job = write_job(folder, inventory, "bench-slurm", ["python", SCRIPT.name, "--steps", "20"], "host")
            runs = folder / "runs"
            launch(job, runs, env)  # warms the shared folder's workdir copy
            ours, hand, firsts = [], [], []
            for k in range(args.runs):
                wall, first, output = launch(job, runs, env)
                ours.append(wall)
                firsts.append(first or float("nan"))
                run_dir = runs / re.search(r"^launch: run (\S+) on", output, re.M).group(1)
                hand.append(by_hand(run_dir, env, k))
            rows.append(("warm, 2 x 1", statistics.median(hand), statistics.median(ours), statistics.median(firsts)))
            if args.cold:
                rows.append(cold_reference(lab, cluster, folder, env))
    finally:
        cluster.down()
        lab.down()
    table = Table(title="Slurm: launch against the same batch script by hand (medians, seconds)")
    for column in ("case", "by hand", "launch", "launch / by hand", "submit -> first rank line"):
        table.add_column(column)
    for case, by, us, first in rows:
        table.add_row(case, f"{by:.2f}" if by else "-", f"{us:.2f}", f"{us / by:.2f}" if by else "-", f"{first:.2f}")
    Console().print(table)


def cold_reference(lab, cluster, folder: Path, env: dict[str, str]) -> tuple[str, float | None, float, float]:
    """The reference job, once, on hosts that lack its image."""
    base = base_image()
    for host in lab.hosts:
        lab.docker(host.name, "image", "prune", "-af", check=False)
    work = folder / "book"
    shutil.copytree(BOOK, work)
    inventory = cluster.inventory(folder / "cluster-ref.yaml")
    job = write_job(work, inventory, "bench-slurm-reference", ["python", "resnet18_cifar10.py", *REFERENCE_ARGS], "docker",
                    base=base)
    job.write_text(job.read_text().replace(f"image: {{base: '{base}'}}", f"image: {{base: '{base}', requirements: requirements.txt}}"))
    wall, first, _ = launch(job, folder / "runs", env)
    return "cold reference", None, wall, first or float("nan")


if __name__ == "__main__":
    main()
