"""Launching on 3 simulated hosts against doing the same by hand, and against the warm launch.

Cases (medians of --runs runs each, --cold-runs for the cold ones):
- warm: image and workdir already on the hosts. By hand: copy the script to each host, then in
  parallel `ssh host docker run --network host BASE torchrun --nnodes 3 --node-rank i ...`.
- edit: relaunch after a one-line edit of the script (the workdir also holds a 20 MB data file).
- requirements: relaunch after the requirements change (a new small package).
- cold probe / cold reference: hosts whose image stores are empty; the probe on the lab's base
  (PyTorch for CPUs), the reference job (ResNet-18, jobs/book, one short epoch) on the project's CPU
  base (PyTorch and torchvision). By hand: `docker save | ssh host docker load` to every host in
  parallel, copy the code, and the same run.
Per case: seconds, the job image's size, and what was sent to each host (image layers + workdir).
Needs root and the lab's set-up (scripts/setup-lab.sh).
    .venv/bin/python bench/multinode.py [--runs 5] [--cold-runs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import simlab  # noqa: E402

SCRIPT = ROOT / "jobs/allreduce/train.py"
BOOK = ROOT / "jobs/book"
REFERENCE_ARGS = ["--epochs", "1", "--synthetic-size", "384", "--eval-size", "96"]


def base_image(requirements: str | None = None, repo: str | None = None) -> str:
    env = dict(os.environ, **({"REQUIREMENTS": str(ROOT / requirements), "REPO": repo} if requirements and repo else {}))
    out = subprocess.run([str(ROOT / "images/build-cpu-base.sh")], capture_output=True, text=True, check=True, env=env)
    return out.stdout.split()[-1]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def sent_mb(output: str) -> dict[str, float]:
    """Per host: MB of image layers and workdir files sent, from the launcher's lines."""
    per: dict[str, float] = {}
    for host, size, unit in re.findall(r"^(h\d): (?:sent \d+ layer\(s\)|workdir \w+: sent \d+ file\(s\)[^,]*), ([\d.]+) (kB|MB)", output, re.M):
        per[host] = per.get(host, 0.0) + float(size) / (1000 if unit == "kB" else 1)
    return per


class Bench:
    def __init__(self, lab: simlab.Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp

    def job(self, name: str, workdir: Path, command: list[str], base: str, requirements: Path | None = None) -> Path:
        path = self.tmp / f"{name}.yaml"
        image = f"{{base: '{base}'" + (f", requirements: '{requirements}'" if requirements else "") + "}"
        path.write_text(
            f"name: {name}\ncluster: {self.lab.cluster_file}\nworkdir: {workdir}\nnproc_per_node: 1\nbackend: gloo\n"
            f"command: {command!r}\nenv: {{OMP_NUM_THREADS: '1'}}\nimage: {image}\nruntime: docker\ntimeout: 30m\n"
        )
        return path

    def launch(self, job: Path) -> str:
        r = subprocess.run([sys.executable, "-m", "launcher", str(job), "--runs-dir", str(self.tmp / "runs")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"launch failed:\n{r.stdout[-3000:]}\n{r.stderr}")
        return r.stdout

    def by_hand_run(self, base: str, code: Path, command: list[str], port: int = 29511) -> None:
        """Copy the code to every host (tar over ssh), then torchrun in a container on each."""
        # the code, and the launcher's metrics writer beside it (the book jobs import launcher.node.metrics)
        tar = subprocess.run(["tar", "--exclude=__pycache__", "-c", "-C", str(code), ".", "-C", str(ROOT), "launcher/__init__.py",
                              "launcher/node"], capture_output=True, check=True).stdout
        for h in self.lab.hosts:
            self.lab.ssh(h.name, "rm -rf /tmp/byhand && mkdir -p /tmp/byhand && tar -x -C /tmp/byhand", input=tar, timeout=300)
        procs = []
        for i, h in enumerate(self.lab.hosts):
            remote = ["docker", "run", "--rm", "--network", "host", "-e", "GLOO_SOCKET_IFNAME=eth0", "-e", "OMP_NUM_THREADS=1",
                      "-e", "PYTHONPATH=/w", "-v", "/tmp/byhand:/w", "-w", "/w", base, "python", "-m", "torch.distributed.run", "--nnodes=3",
                      f"--node-rank={i}", "--nproc-per-node=1", f"--master-addr={self.lab.hosts[0].address}",
                      f"--master-port={port}", *command[1:]]
            procs.append(subprocess.Popen(self.lab.ssh_argv(h.name, shlex.join(remote)), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))
        outputs = [p.communicate()[0] for p in procs]
        failed = [(h.name, out) for h, p, out in zip(self.lab.hosts, procs, outputs) if p.returncode != 0]
        if failed:
            sys.exit("the by-hand run failed: " + "; ".join(f"{name}: {out.decode(errors='replace')[-1500:]}" for name, out in failed))

    def by_hand_ship(self, tag: str) -> None:
        procs = []
        for h in self.lab.hosts:
            save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
            procs.append(subprocess.Popen(self.lab.ssh_argv(h.name, "docker load -q"), stdin=save.stdout, stdout=subprocess.DEVNULL))
            save.stdout.close()
        if any(p.wait() != 0 for p in procs):
            sys.exit("by-hand docker load failed")

    def clear_hosts(self) -> None:
        for h in self.lab.hosts:
            self.lab.ssh(h.name, "docker ps -aq | xargs -r docker rm -f >/dev/null; docker images -aq | xargs -r docker rmi -f >/dev/null; "
                                 "rm -rf /var/tmp/launch-jobs-root /tmp/byhand; true", timeout=300)


def image_size(output: str) -> float:
    tag = re.search(r"^image (\S+) \(", output, re.M).group(1)
    return docker.from_env().images.get(tag).attrs["Size"] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--skip-reference", action="store_true", help="leave out the cold launch of the reference job")
    parser.add_argument("--warm-only", action="store_true", help="only the warm case: image and workdir on the hosts")
    args = parser.parse_args()
    lab_base = base_image("tests/lab-base/requirements.txt", "launch-lab-base")
    cpu_base = None if args.skip_reference or args.warm_only else base_image()
    lab = simlab.Lab(hosts=3).up()
    tmp = Path(tempfile.mkdtemp(prefix="launch-bench-"))
    bench = Bench(lab, tmp)
    rows: dict[str, dict] = {}
    try:
        work = tmp / "probe"
        work.mkdir()
        (work / "train.py").write_text(SCRIPT.read_text())
        (work / "data.bin").write_bytes(os.urandom(20 * 10**6))
        (work / "requirements.txt").write_text("# none yet\n")
        command = ["python", "train.py", "--steps", "20"]
        probe = bench.job("bench-probe", work, command, lab_base, work / "requirements.txt")

        def cold(name: str, job: Path, base: str, code: Path, cmd: list[str]) -> None:
            launches, hands, sent, out = [], [], {}, ""
            for _ in range(args.cold_runs):
                bench.clear_hosts()
                seconds, out = timed(lambda: bench.launch(job))
                launches.append(seconds)
                sent = sent_mb(out)
                bench.clear_hosts()
                hands.append(timed(lambda: (bench.by_hand_ship(base), bench.by_hand_run(base, code, cmd)))[0])
                print(f"{name}: launch {launches[-1]:.1f} s, by hand {hands[-1]:.1f} s", file=sys.stderr, flush=True)
            rows[name] = {"launch": launches, "hand": hands, "sent": sent, "size": image_size(out)}

        if cpu_base:  # first: the longest case, and the one most likely to fail
            reference = bench.job("bench-reference", BOOK, ["python", "resnet18_cifar10.py", *REFERENCE_ARGS], cpu_base,
                                  BOOK / "requirements.txt")
            cold("cold reference", reference, cpu_base, BOOK, ["python", "resnet18_cifar10.py", *REFERENCE_ARGS])
        if not args.warm_only:
            cold("cold probe", probe, lab_base, work, command)
            bench.clear_hosts()
        lab.ensure_image(lab_base)
        out = bench.launch(probe)  # the probe's image and workdir on every host
        warm_l, warm_h = [], []
        for _ in range(args.runs):
            seconds, out = timed(lambda: bench.launch(probe))
            warm_l.append(seconds)
            warm_h.append(timed(lambda: bench.by_hand_run(lab_base, work, command))[0])
        rows["warm"] = {"launch": warm_l, "hand": warm_h, "sent": sent_mb(out), "size": image_size(out)}
        edit_l, edit_h, edit_sent = [], [], {}
        for _ in range(0 if args.warm_only else args.runs):
            with (work / "train.py").open("a") as fh:
                fh.write(f"# edited {time.time()}\n")
            seconds, out = timed(lambda: bench.launch(probe))
            edit_l.append(seconds)
            edit_sent = sent_mb(out)
            edit_h.append(timed(lambda: bench.by_hand_run(lab_base, work, command))[0])
        if edit_l:
            rows["edit (one line)"] = {"launch": edit_l, "hand": edit_h, "sent": edit_sent, "size": image_size(out)}
        req_l, req_sent = [], {}
        for i in range(0 if args.warm_only else args.runs):
            (work / "requirements.txt").write_text(f"# change {i} at {time.time()}\nsix\n")
            seconds, out = timed(lambda: bench.launch(probe))
            req_l.append(seconds)
            req_sent = sent_mb(out)
        if req_l:
            rows["requirements change"] = {"launch": req_l, "hand": [], "sent": req_sent, "size": image_size(out)}
    finally:
        lab.down()
    warm = statistics.median(rows["warm"]["launch"])
    table = Table(title=f"3 simulated hosts, 1 process each; medians of {args.runs} runs ({args.cold_runs} for cold ones)")
    for col in ("case", "launch (s)", "by hand (s)", "launch / by hand", "launch / warm", "image (MB)", "sent per host (MB)"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for name in ("warm", "edit (one line)", "requirements change", "cold probe", "cold reference"):
        if name not in rows:
            continue
        row = rows[name]
        launch_s = statistics.median(row["launch"])
        hand = statistics.median(row["hand"]) if row["hand"] else None
        sent = ", ".join(f"{row['sent'].get(h, 0.0):.3f}" for h in ("h1", "h2", "h3"))
        table.add_row(name, f"{launch_s:.2f}", f"{hand:.2f}" if hand else "-", f"{launch_s / hand:.2f}" if hand else "-",
                      f"{launch_s / warm:.2f}", f"{row['size']:.0f}", sent)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
