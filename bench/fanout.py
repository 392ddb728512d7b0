"""A cold launch to 1, 3 and 6 hosts with the launching machine's link limited, against the same by hand.

The lab's base image (Python and PyTorch for CPUs, about 1.2 GB) goes to hosts whose image stores
are empty, with a token bucket on the lab's bridge (it shapes only what this machine sends; the
hosts' traffic to each other is bridged past it) at --rate (200 Mbit/s).
- by hand: `docker save BASE | ssh host docker load` to every host in parallel;
- launch: `launch job.yaml` of a one-step job on that base (its own layers are a few kB), the whole
  launch from the command to the summary; the image part of it (the `ship` phase) beside it.
The launch compresses its stream as far as the link is the bottleneck (LAUNCH_IMAGE_COMPRESSION,
--compression sets it for the launches; by hand sends the plain `docker save`). Per case: seconds, bytes out of this machine (the bridge's counter), and the ratio to the 1-host time
of the same way; for the launch also when the last host had the whole stream (from its lines), and
for scale `docker load` of the image into that many hosts at once from a file here, no network: the
simulated hosts share this machine's 2 cores and disk, so N engines unpacking at once take about N
times one (real hosts unpack side by side). Light hosts: each has only sshd and dockerd. Needs root
and scripts/setup-lab.sh.
    .venv/bin/python bench/fanout.py [--hosts 1,3,6] [--rate 200mbit] [--compression auto|on|off] [--launch-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
import simlab  # noqa: E402
from multinode import base_image  # noqa: E402

PREFIX, SUBNET = "lfan", 26


def bytes_out(lab: simlab.Lab) -> int:
    return int(Path(f"/sys/class/net/{lab.bridge}/statistics/tx_bytes").read_text())


def empty_stores(lab: simlab.Lab) -> None:
    for host in lab.hosts:
        ids = lab.docker(host.name, "image", "ls", "-aq").stdout.decode().split()
        if ids:
            lab.docker(host.name, "image", "rm", "-f", *sorted(set(ids)), check=False)


def by_hand(lab: simlab.Lab, base: str, n: int) -> float:
    errors: list[str] = []

    def one(host: str) -> None:
        save = subprocess.Popen(["docker", "save", base], stdout=subprocess.PIPE)
        load = subprocess.run(lab.ssh_argv(host, "docker load -q"), stdin=save.stdout, capture_output=True)
        assert save.stdout is not None
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            errors.append(f"{host}: {load.stderr.decode(errors='replace')[-300:]}")

    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(h.name,)) for h in lab.hosts[:n]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("by hand failed: " + "; ".join(errors))
    return time.perf_counter() - start


def cluster_of(lab: simlab.Lab, n: int, tmp: Path) -> Path:
    text = lab.cluster_file.read_text()
    cut = text.find(f"  - name: h{n + 1}\n")
    path = tmp / f"cluster{n}.yaml"
    path.write_text(text if cut < 0 else text[:cut])
    return path


def loads_alone(lab: simlab.Lab, archive: Path, n: int) -> float:
    """Seconds for n hosts' engines to `docker load` the image at once from a file here, no network:
    what unpacking costs when the simulated hosts share this machine's cores and disk."""
    empty_stores(lab)
    start = time.perf_counter()
    procs = [subprocess.Popen(["docker", "-H", f"unix://{h.docker_socket}", "load", "-q", "-i", str(archive)],
                              stdout=subprocess.DEVNULL) for h in lab.hosts[:n]]
    if any(p.wait() != 0 for p in procs):
        sys.exit("docker load from the archive failed")
    return time.perf_counter() - start


def launched(lab: simlab.Lab, base: str, n: int, tmp: Path, compression: str) -> tuple[float, float, float, str]:
    """Seconds of the whole launch, of its `ship` phase, until every host had the whole stream, and
    the launcher's image lines."""
    workdir = tmp / "job"
    workdir.mkdir(exist_ok=True)
    (workdir / "train.py").write_text((ROOT / "jobs/allreduce/train.py").read_text())
    job = tmp / f"fanout{n}.yaml"
    job.write_text(f"name: fanout\ncluster: {cluster_of(lab, n, tmp)}\nworkdir: {workdir}\nnproc_per_node: 1\n"
                   f"backend: gloo\ncommand: ['python', 'train.py', '--steps', '1']\nenv: {{OMP_NUM_THREADS: '1'}}\n"
                   f"image: {{base: '{base}'}}\nruntime: docker\ntimeout: 30m\n")
    runs = tmp / "runs"
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "launcher", str(job), "--runs-dir", str(runs)], capture_output=True, text=True,
                       env={**os.environ, "LAUNCH_IMAGE_COMPRESSION": compression})
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"launch failed:\n{r.stdout[-3000:]}\n{r.stderr}")
    summary = max(runs.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    ship = json.loads(summary.read_text())["phases_s"]["ship"]
    lines = [line for line in r.stdout.splitlines() if "left this machine" in line or re.match(r"h\d+: (received|sent \d+ layer)", line)]
    streams = [float(t) for t in re.findall(r" in ([\d.]+) s, loaded", "\n".join(lines))]
    if len(streams) != n:
        sys.exit(f"not every host's line says when it had the stream:\n{r.stdout[-3000:]}")
    return seconds, ship, max(streams), "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="1,3,6")
    parser.add_argument("--rate", default="200mbit")
    parser.add_argument("--launch-only", action="store_true", help="skip the by-hand baseline (no ratios to it)")
    parser.add_argument("--compression", default="auto", choices=("auto", "on", "off"), help="LAUNCH_IMAGE_COMPRESSION for the launches")
    args = parser.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    console = Console(width=200)
    base = base_image("tests/lab-base/requirements.txt", "launch-lab-base")
    size = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", base], capture_output=True, text=True,
                              check=True).stdout)
    simlab.cleanup(PREFIX)
    lab = simlab.Lab(hosts=max(counts), prefix=PREFIX, subnet=SUBNET).up()
    rows = []
    try:
        subprocess.run(["tc", "qdisc", "add", "dev", lab.bridge, "root", "tbf", "rate", args.rate, "burst", "256kb",
                        "latency", "400ms"], check=True)
        with tempfile.TemporaryDirectory(prefix="fanout-bench-") as folder:
            tmp = Path(folder)
            archive = tmp / "base.tar"
            subprocess.run(["docker", "save", "-o", str(archive), base], check=True)
            for n in counts:
                alone = loads_alone(lab, archive, n)
                empty_stores(lab)
                before = bytes_out(lab)
                hand = float("nan") if args.launch_only else by_hand(lab, base, n)
                hand_bytes = bytes_out(lab) - before
                empty_stores(lab)
                before = bytes_out(lab)
                total, ship, stream, lines = launched(lab, base, n, tmp, args.compression)
                ours = bytes_out(lab) - before
                console.print(f"[dim]{n} host(s): by hand {hand:.1f} s, launch {total:.1f} s (ship {ship:.1f} s), "
                              f"docker load alone {alone:.1f} s\n{lines}[/dim]")
                rows.append((n, hand, hand_bytes, total, ship, stream, ours, alone))
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", lab.bridge, "root"], check=False)
        empty_stores(lab)  # the hosts' stores outlive the lab: 1.2 GB each otherwise
        lab.down()
    table = Table(title=f"cold launch of {base} ({size / 1e9:.2f} GB) with this machine's link at {args.rate}, "
                        f"the launch's compression {args.compression}")
    columns = ("hosts", "by hand s", "by hand GB out", "by hand / 1 host", "launch s", "ship s", "stream at every host s",
               "launch GB out", "launch / 1 host", "stream / 1 host", "docker load alone s", "launch / by hand")
    for column in columns:
        table.add_column(column, justify="right")
    one = rows[0]
    for n, hand, hand_bytes, total, ship, stream, ours, alone in rows:
        table.add_row(str(n), f"{hand:.1f}", f"{hand_bytes / 1e9:.2f}", f"{hand / one[1]:.2f}", f"{total:.1f}", f"{ship:.1f}",
                      f"{stream:.1f}", f"{ours / 1e9:.2f}", f"{total / one[3]:.2f}", f"{stream / one[5]:.2f}", f"{alone:.1f}",
                      f"{total / hand:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
