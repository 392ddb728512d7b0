"""The warm path on `runtime: host` lab hosts: `launch JOB` against the same start by hand, and
where the launcher's time goes before the first rank starts and after the last one ends.

Simulated hosts with sshd only (runtime: host runs this machine's Python there, shared as labs share
a toolchain; no Docker engine). For each N of --hosts: a trivial gloo job (one process per host, an
all-reduce, exit); one warm-up launch (the workdir copy in place), then --repeat rounds alternating
(a) `python -m launcher job.yaml` on the N-host inventory and (b) by hand: `ssh host torchrun
--nnodes N --rdzv-backend c10d ...` to every host at once, with the same python and the code copied
there beforehand. The table gives the medians and their ratio. --profile N,...: one traced launch
per N and one start by hand (bench/warmtrace.py): the launcher's steps and SSH round trips, and when
each process on the hosts started and ended.
Needs root; the lab is taken down at exit, also on Ctrl-C.
    PYTHONPATH=$PWD .venv/bin/python bench/warmpath.py [--hosts 1,4,8,16] [--repeat 3] [--profile 4,16]
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]
import simlab  # noqa: E402
import warmtrace  # noqa: E402
from multinode import timed as timed_call  # noqa: E402
from overhead import timed as timed_command  # noqa: E402
PREFIX, SUBNET = "lwarm", 10  # apart from the tests' labs (subnets 7 to 9, and 11 for a second run of them)
BY_HAND_CODE = "/var/tmp/warmpath-byhand"
JOB_SCRIPT = """\
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(4)
dist.all_reduce(t)
assert t[0].item() == dist.get_world_size(), t
dist.barrier()  # every rank past its last collective before the group is torn down
dist.destroy_process_group()
print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: ok", flush=True)
"""


class SshLab(simlab.Lab):
    """simlab.Lab with sshd alone on each host (runtime: host needs no engine), and up to 16 hosts."""

    def __init__(self, hosts: int) -> None:
        super().__init__(hosts=1, prefix=PREFIX, subnet=SUBNET)
        state = self.hosts[0].data_root.parent.parent
        self.hosts = [simlab.SimHost(name=f"h{i}", address=f"10.77.{SUBNET}.{10 + i}", netns=f"{PREFIX}-h{i}",
                                     veth=f"{PREFIX}-h{i}", dir=self.dir / f"h{i}", data_root=state / f"{PREFIX}-h{i}" / "docker")
                      for i in range(1, hosts + 1)]

    def up(self) -> "SshLab":
        """Refuse a subnet another lab (another prefix) uses now: two bridges with one address break both."""
        mine = f"10.77.{SUBNET}."
        for line in subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout.splitlines():
            if f"inet {mine}" in line and line.split()[1] != self.bridge:
                sys.exit(f"bench: {line.split()[1]} already uses {mine}0/24; set SUBNET in {Path(__file__).name} to a free one")
        return super().up()

    def start_services(self, host: simlab.SimHost, timeout: float = 60) -> None:
        """sshd only; wait until it answers."""
        with open(host.dir / "sshd.log", "ab") as out:
            subprocess.Popen(self._enter(host) + ["/usr/sbin/sshd", "-D", "-e", "-f", str(host.dir / "sshd_config")],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.ssh(host.name, "true", check=False, timeout=5).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"lab {host.name}: sshd did not come up in {timeout:.0f} s")
            time.sleep(0.2)

    def down(self) -> None:
        super().down()
        for host in self.hosts:  # the (empty) image stores simlab keeps between bring-ups
            subprocess.run(["rm", "-rf", str(host.data_root.parent)], check=False)


def write_job(tmp: Path, lab, n: int) -> Path:
    """The job and an inventory of the lab's first `n` hosts, with this machine's python for the ranks."""
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / "job.py").write_text(JOB_SCRIPT)
    lines = lab.cluster_file.read_text().split("  - name: ")
    hosts = "".join("  - name: " + block.replace("    nic: eth0\n", f"    python: {sys.executable}\n")
                    for block in lines[1:n + 1])
    (tmp / f"cluster{n}.yaml").write_text(lines[0] + hosts)
    job = tmp / f"job{n}.yaml"
    job.write_text(f"name: warmpath\ncluster: {tmp / f'cluster{n}.yaml'}\nworkdir: {code}\nnproc_per_node: 1\n"
                   "backend: gloo\nruntime: host\ncommand: [python, job.py]\nenv: {OMP_NUM_THREADS: '1'}\ntimeout: 5m\n")
    return job


def by_hand(lab, n: int, port: int) -> None:
    """torchrun on the first `n` hosts at once over plain ssh, c10d rendezvous on the first; exits on failure."""
    first = lab.hosts[0].address
    procs = []
    for i, host in enumerate(lab.hosts[:n]):
        torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={n}", f"--node-rank={i}", "--nproc-per-node=1",
                    "--rdzv-backend=c10d", f"--rdzv-endpoint={first}:{port}", f"--rdzv-id=byhand-{port}",
                    f"--rdzv-conf=is_host={int(i == 0)}", f"--local-addr={host.address}", "--max-restarts=0", "job.py"]
        remote = f"cd {BY_HAND_CODE} && OMP_NUM_THREADS=1 GLOO_SOCKET_IFNAME=eth0 exec {shlex.join(torchrun)}"
        procs.append(subprocess.Popen(lab.ssh_argv(host.name, remote), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [(h.name, out) for h, p, out in zip(lab.hosts, procs, outputs) if p.returncode != 0]
    if failed:
        sys.exit("by hand failed: " + "; ".join(f"{name}: {out.decode(errors='replace')[-1500:]}" for name, out in failed))


def measure(lab, tmp: Path, sizes: list[int], repeat: int) -> dict[int, tuple[list[float], list[float]]]:
    """Per N: the launcher's wall times and the by-hand ones, alternating, after one warm-up of each."""
    for host in lab.hosts:  # the code where the by-hand start expects it, as a user would have copied it
        lab.ssh(host.name, f"mkdir -p {BY_HAND_CODE} && cat > {BY_HAND_CODE}/job.py", input=JOB_SCRIPT.encode())
    rows: dict[int, tuple[list[float], list[float]]] = {}
    ports = iter(range(29600, 65000, 2))  # a fresh rendezvous port each time: none left in TIME_WAIT
    for n in sizes:
        launch = [sys.executable, "-m", "launcher", str(write_job(tmp, lab, n)), "--runs-dir", str(tmp / "runs")]
        timed_command(launch, ROOT)
        by_hand(lab, n, next(ports))
        launcher, hand = [], []
        for _ in range(repeat):
            launcher.append(timed_command(launch, ROOT))
            port = next(ports)
            hand.append(timed_call(lambda: by_hand(lab, n, port))[0])
            print(f"N={n}: launcher {launcher[-1]:.2f} s, by hand {hand[-1]:.2f} s", file=sys.stderr, flush=True)
        rows[n] = (launcher, hand)
    return rows


def print_table(rows: dict[int, tuple[list[float], list[float]]], repeat: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"warm path, runtime: host, 1 process per host; medians of {repeat} alternating runs")
    for col in ("N", "launcher runs (s)", "by-hand runs (s)", "launcher median (s)", "by-hand median (s)", "ratio"):
        table.add_column(col, justify="right")
    for n, (launcher, hand) in rows.items():
        ml, mh = statistics.median(launcher), statistics.median(hand)
        table.add_row(str(n), " ".join(f"{v:.2f}" for v in launcher), " ".join(f"{v:.2f}" for v in hand),
                      f"{ml:.2f}", f"{mh:.2f}", f"{ml / mh:.2f}")
    Console(width=160).print(table)


def _interrupted(_signum, _frame) -> None:
    raise KeyboardInterrupt  # a kill tears the lab down too, as Ctrl-C does


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,4,8,16", help="host counts to compare, e.g. 1,4,8,16 (at most 16)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds per count (0: no comparison)")
    parser.add_argument("--profile", default="", help="host counts to trace one launch of, e.g. 4,16")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, traces) and say where")
    args = parser.parse_args()
    try:
        sizes = [int(x) for x in args.hosts.split(",") if x] if args.repeat else []
        traced = [int(x) for x in args.profile.split(",") if x]
    except ValueError:
        sys.exit(f"bench: --hosts and --profile take counts such as 1,4,8,16; got {args.hosts!r}, {args.profile!r}")
    if os.geteuid() != 0:
        sys.exit("bench: the simulated lab needs root")
    if not sizes + traced or not 1 <= min(sizes + traced) <= max(sizes + traced) <= 16:
        sys.exit("bench: host counts must be 1 to 16")
    signal.signal(signal.SIGTERM, _interrupted)
    lab = SshLab(max(sizes + traced))
    tmp = Path(tempfile.mkdtemp(prefix="launch-warmpath-"))
    try:
        lab.up()
        rows = measure(lab, tmp, sizes, args.repeat) if sizes else {}
        for n in traced:
            if n not in rows:  # its warm-up launch
                measure(lab, tmp, [n], 0)
            warmtrace.profile(lab, tmp, n, write_job(tmp, lab, n), by_hand, 29500 + 2 * n)
    except KeyboardInterrupt:
        rows = {}
        print("bench: interrupted; taking the lab down", file=sys.stderr)
    finally:
        lab.down()
        if args.keep:
            print(f"bench: kept {tmp}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    if rows:
        print_table(rows, args.repeat)


if __name__ == "__main__":
    main()
