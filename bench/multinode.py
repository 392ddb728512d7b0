"""Multi-node launch on 3 simulated hosts against doing the same by hand (ENVIRONMENT.md's baseline).

- warm: image already on the hosts. launch vs by hand: copy the script to each host, then in
  parallel `ssh host docker run --network host BASE torchrun --nnodes 3 --node-rank i ...`
- cold: hosts lack every image. launch vs by hand: `docker save | ssh host docker load` to all
  hosts in parallel, then the same run.
- relaunch after a code edit: MB sent per host, and its time against the warm launch.
Needs root and the lab's set-up (scripts/setup-lab.sh).
    .venv/bin/python bench/multinode.py [--runs 3]
"""

from __future__ import annotations

import argparse
import re
import shlex
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

SCRIPT = ROOT / "jobs/allreduce/train.py"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold-only", action="store_true", help="measure only the cold case")
    parser.add_argument("--warm-only", action="store_true", help="measure only the warm case")
    args = parser.parse_args()
    base = subprocess.run([str(ROOT / "images/build-cpu-base.sh")], capture_output=True, text=True, check=True).stdout.split()[-1]
    lab = simlab.Lab(hosts=3).up()
    tmp = Path(tempfile.mkdtemp(prefix="launch-bench-"))
    try:
        job = tmp / "job"
        job.mkdir()
        (job / "train.py").write_text(SCRIPT.read_text())
        (job / "job.yaml").write_text(
            f"name: bench-allreduce\ncluster: {lab.cluster_file}\nnproc_per_node: 1\nbackend: gloo\n"
            "command: [python, train.py, --steps, '20']\nenv: {OMP_NUM_THREADS: '1'}\n"
            f"image: {{base: '{base}'}}\nruntime: docker\ntimeout: 5m\n"
        )

        def launch() -> str:
            r = subprocess.run([sys.executable, "-m", "launcher", str(job / "job.yaml"), "--runs-dir", str(tmp / "runs")],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"launch failed:\n{r.stdout[-3000:]}\n{r.stderr}")
            return r.stdout

        def by_hand_run() -> None:
            for h in lab.hosts:
                lab.ssh(h.name, "mkdir -p /tmp/byhand && cat > /tmp/byhand/train.py", input=SCRIPT.read_bytes())
            procs = []
            for i, h in enumerate(lab.hosts):
                remote = ["docker", "run", "--rm", "--network", "host", "-e", "GLOO_SOCKET_IFNAME=eth0", "-e", "OMP_NUM_THREADS=1",
                          "-v", "/tmp/byhand:/w", "-w", "/w", base, "python", "-m", "torch.distributed.run", "--nnodes=3",
                          f"--node-rank={i}", "--nproc-per-node=1", f"--master-addr={lab.hosts[0].address}",
                          "--master-port=29511", "train.py", "--steps", "20"]
                procs.append(subprocess.Popen(lab.ssh_argv(h.name, shlex.join(remote)), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            if any(p.wait() != 0 for p in procs):
                sys.exit("the by-hand run failed")

        def by_hand_ship(tag: str) -> None:
            procs = []
            for h in lab.hosts:
                save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
                procs.append(subprocess.Popen(lab.ssh_argv(h.name, "docker load -q"), stdin=save.stdout, stdout=subprocess.DEVNULL))
                save.stdout.close()
            if any(p.wait() != 0 for p in procs):
                sys.exit("by-hand docker load failed")

        def clear_hosts() -> None:
            for h in lab.hosts:
                lab.ssh(h.name, "docker rmi -f $(docker images -aq) >/dev/null 2>&1; docker image prune -af >/dev/null")

        cold_launch = cold_hand = float("nan")
        if args.warm_only:
            lab.ensure_image(base)
            launch()  # ships the job image once
        else:  # cold: nothing on the hosts
            clear_hosts()
            cold_launch = timed(launch)
            clear_hosts()
            cold_hand = timed(lambda: (by_hand_ship(base), by_hand_run()))
        if args.cold_only:
            print(f"cold: launch {cold_launch:.2f} s, by hand {cold_hand:.2f} s, ratio {cold_launch / cold_hand:.2f}")
            return
        # warm: the image is there
        warm = {"launch": [], "by hand": []}
        for _ in range(args.runs):
            warm["launch"].append(timed(launch))
            warm["by hand"].append(timed(by_hand_run))
        # relaunch after a code edit
        with (job / "train.py").open("a") as fh:
            fh.write(f"\n# edited {time.time()}\n")
        out = ""

        def relaunch() -> None:
            nonlocal out
            out = launch()

        edit_time = timed(relaunch)
        sent = [float(n) * (1000 if unit == "MB" else 1) for n, unit in re.findall(r": sent \d+ layer\(s\), ([\d.]+) (kB|MB)", out)]
    finally:
        lab.down()
    table = Table(title="3 simulated hosts, allreduce job (20 steps, 1 process per host)")
    for col in ("case", "launch (s)", "by hand (s)", "ratio", "goal"):
        table.add_column(col, justify="left" if col == "case" else "right")
    wl, wh = statistics.median(warm["launch"]), statistics.median(warm["by hand"])
    table.add_row(f"warm, median of {args.runs}", f"{wl:.2f}", f"{wh:.2f}", f"{wl / wh:.2f}", "<= 1.15")
    table.add_row("cold (no image on hosts)", f"{cold_launch:.2f}", f"{cold_hand:.2f}", f"{cold_launch / cold_hand:.2f}", "<= 1.2")
    table.add_row("relaunch after a code edit", f"{edit_time:.2f}", f"warm launch {wl:.2f}", f"{edit_time / wl:.2f}", "-")
    Console(width=140).print(table)
    print(f"relaunch after a code edit: kB sent per host: {', '.join(f'{kb:.1f}' for kb in sent)} (goal < 1000 kB)")


if __name__ == "__main__":
    main()
