"""A real Slurm cluster on the simulated lab (tests/simlab.py), for the Slurm backend's integration tests.

slurmctld runs on the machine, at the lab bridge's address, in a UTS namespace of its own whose
hostname is the controller's name (slurmctld starts only where the hostname is `SlurmctldHost`); a
slurmd runs in every lab host's namespaces (node names h1..hN, the hosts' addresses); one munged
serves them all through a socket in the shared filesystem. Nothing is written to /etc/slurm or
/etc/munge: the config, key, spool, logs and pid files live under STATE/<prefix>/slurm, and the
folder every node sees at the same path is STATE/<prefix>/shared.

    python3 tests/simslurm.py up      # on a lab that is up; prints the SLURM_CONF to export
    python3 tests/simslurm.py down    # the cluster only; the lab stays up
LAUNCH_LAB_PREFIX / LAUNCH_LAB_SUBNET pick a lab other than the tests' default one (llab, 7).
See tests/LAB.md.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import simlab

CONTROLLER_PORT_BASE = 17000  # slurmctld listens on 17000 + the lab's subnet, on the machine (all addresses)
SLURMD_PORT = 6818  # Slurm's default: each slurmd is alone in its host's network namespace
PARTITION = "lab"
CPUS_PER_NODE = 2
SLURMSTEPD = "/usr/sbin/slurmstepd"


class SlurmCluster:
    """Slurm on a running `simlab.Lab`: `SlurmCluster(lab).up()`, `.down()`; clients need `.env`."""

    def __init__(self, lab: simlab.Lab, slurmd_timeout: int = 60) -> None:
        self.lab = lab
        self.slurmd_timeout = slurmd_timeout
        self.subnet = int(lab.gateway.split(".")[2])
        self.dir = lab.dir / "slurm"
        self.shared_dir = lab.dir / "shared"
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.controller = f"{lab.prefix}-ctl"
        self.port = CONTROLLER_PORT_BASE + self.subnet
        self._procs: list[subprocess.Popen] = []

    # ---- what clients and tests use
    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client on this machine needs (sbatch hands it on to the jobs by default)."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command (sinfo, sbatch, scontrol...) on this machine, text output."""
        return subprocess.run(argv, env={**os.environ, **self.env}, check=check, capture_output=True, text=True,
                              timeout=timeout)

    def squeue(self) -> list[str]:
        """The IDs of the jobs in the queue, pending or running."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def job_state(self, job_id: str) -> str | None:
        """COMPLETED, FAILED, CANCELLED...; None once slurmctld has forgotten the job (MinJobAge s after its end)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields.get("JobState")

    def node_states(self) -> dict[str, str]:
        """sinfo's state of every node: idle, alloc, mix, down*, idle* (not responding)..."""
        out = self.run("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until every node is idle. A slurmd a stopped host lost (`lab.stop_host`) is started again
        first, so a session's cluster outlives the fault tests that share its lab."""
        for host in self.lab.hosts:
            if f"slurmd-{host.name}" not in simlab.recorded_daemons(self.lab.prefix):
                self.start_slurmd(host.name)
        deadline = time.monotonic() + timeout
        states: dict[str, str] | str = {}
        while time.monotonic() < deadline:
            result = self.run("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t", check=False, timeout=20)
            states = dict(line.split() for line in result.stdout.splitlines() if line.strip()) or result.stderr.strip()
            if isinstance(states, dict) and set(states) == {h.name for h in self.lab.hosts} and set(states.values()) == {"idle"}:
                return
            time.sleep(0.2)
        raise RuntimeError(f"slurm: the nodes are not all idle after {timeout:.0f} s: {states}\n{self._log_tails()}")

    def node_address(self, name: str) -> str:
        return self.lab.host(name).address

    def cut_node(self, name: str) -> None:
        """The node keeps running but nothing reaches it; slurmctld marks it `down*` once it has not
        answered for SlurmdTimeout (60 s by default; with the ping cycle about 80 s)."""
        self.lab.cut_link(name)

    def restore_node(self, name: str, register: bool = True) -> None:
        """Reconnect the node. slurmctld stops pinging a node it set DOWN and asks it to register only
        every 20th ping cycle (about 400 s here); with `register` the node's slurmd registers at once
        (SIGHUP: it rereads slurm.conf and registers), so a down node is back in service (ReturnToService=2)."""
        self.lab.restore_link(name)
        pid = simlab.recorded_daemons(self.lab.prefix).get(f"slurmd-{name}")
        if register and pid:
            os.kill(pid, signal.SIGHUP)

    def inventory(self, path: Path, **overrides) -> Path:
        """A launcher inventory for this cluster at `path`; `overrides` are merged into its `slurm`
        mapping (a value None drops that key)."""
        import yaml

        slurm = {"login": "local", "shared_dir": str(self.shared_dir), "partition": PARTITION,
                 "cpus_per_node": CPUS_PER_NODE, "gpus_per_node": 0, "container": "docker"}
        slurm.update(overrides)
        path = Path(path)
        path.write_text(yaml.safe_dump({"slurm": {k: v for k, v in slurm.items() if v is not None}}, sort_keys=False))
        return path

    # ---- bring-up and teardown
    def up(self, timeout: float = 60) -> "SlurmCluster":
        """Start munged, slurmctld and a slurmd per host (after ending what a crashed cluster left), then
        wait until every node is idle."""
        for host in self.lab.hosts:
            if not host.holder_pid_file.exists():
                raise RuntimeError(f"slurm: lab {self.lab.prefix} is not up ({host.holder_pid_file} is missing)")
        self.down()
        try:
            self._files()
            self._check_shared()
            self._start_munged()
            self._start_controller()
            for host in self.lab.hosts:
                self.start_slurmd(host.name)
            self.wait_idle(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Cancel every job, end the daemons this cluster started (by PID) and what is left of its jobs on
        the hosts, and remove its files and the shared folder."""
        if "slurmctld" in simlab.recorded_daemons(self.lab.prefix):
            self._cancel_jobs()
        self._end_steps()
        names = self._daemon_names()
        simlab._end_processes(simlab.daemon_processes(self.lab.prefix, names), grace_s=10)
        self._end_steps()
        for proc in self._procs:
            proc.wait()
        self._procs.clear()
        for name in names:
            simlab.forget_daemon(self.lab.prefix, name)
        for host in self.lab.hosts:
            (host.dir / "run" / "slurmd.pid").unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.shared_dir, ignore_errors=True)

    def leftovers(self) -> dict[str, list[str]]:
        """What of this cluster is on the machine now: its daemons, job steps on the hosts, its files."""
        daemons = [str(p) for p in simlab.daemon_processes(self.lab.prefix, self._daemon_names())]
        files = [str(p) for p in [self.dir, self.shared_dir, *(h.dir / "run" / "slurmd.pid" for h in self.lab.hosts)]
                 if p.exists()]
        return {"daemons": daemons, "steps": [str(p) for p in self._steps()], "files": files}

    def _daemon_names(self) -> set[str]:
        return {f"slurmd-{h.name}" for h in self.lab.hosts} | {"slurmctld", "munged"}

    def start_slurmd(self, name: str) -> None:
        """Start the slurmd of host `name` in its namespaces (again, after `lab.stop_host`/`start_host`)."""
        host = self.lab.host(name)
        self._procs = [p for p in self._procs if p.poll() is None]  # reap the ones a stopped host lost
        # slurmd signals whatever PID its pid file names: a stale one (a stopped host's) goes first.
        (host.dir / "run" / "slurmd.pid").unlink(missing_ok=True)
        holder = host.holder_pid_file.read_text().strip()
        self._daemon(f"slurmd-{name}", ["nsenter", f"--target={holder}", "--mount", "--uts", "--net", "--",
                                        "slurmd", "-D", "-N", name, "-f", str(self.conf)])

    def _daemon(self, name: str, argv: list[str]) -> None:
        """Start a daemon in the foreground (nsenter and unshare exec it: the PID is the daemon's own)."""
        with open(self.dir / "log" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True, cwd=self.dir)
        self._procs.append(proc)
        simlab.record_daemon(self.lab.prefix, name, proc.pid)

    def _files(self) -> None:
        for sub in ("log", "state", "munge", *(f"spool/{h.name}" for h in self.lab.hosts)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "munge").chmod(0o755)  # munged: the socket's folder must be searchable by all
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.shared_dir.mkdir(parents=True)
        self.shared_dir.chmod(0o1777)
        self.conf.write_text(self._slurm_conf())

    def _check_shared(self) -> None:
        """The hosts have private /tmp, /root, /run...: a STATE under one of them would not be shared."""
        for host in self.lab.hosts:
            holder = host.holder_pid_file.read_text().strip()
            probe = ["nsenter", f"--target={holder}", "--mount", "--", "test", "-w", str(self.shared_dir)]
            if subprocess.run(probe, capture_output=True).returncode != 0:
                raise RuntimeError(f"slurm: {self.shared_dir} is not visible on {host.name}; "
                                   "LAUNCH_LAB_STATE must not lie under a host's private folders")

    def _start_munged(self, timeout: float = 10) -> None:
        munge = self.dir / "munge"
        self._daemon("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                                f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                                f"--log-file={self.dir / 'log' / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        deadline = time.monotonic() + timeout
        while not self.munge_socket.exists():
            if time.monotonic() > deadline or "munged" not in simlab.recorded_daemons(self.lab.prefix):
                raise RuntimeError(f"slurm: munged did not start\n{self._log_tails()}")
            time.sleep(0.02)

    def _start_controller(self) -> None:
        (self.dir / "slurmctld.pid").unlink(missing_ok=True)
        start = f"hostname {shlex.quote(self.controller)} && exec slurmctld -D -f {shlex.quote(str(self.conf))}"
        self._daemon("slurmctld", ["unshare", "--uts", "--", "sh", "-c", start])

    def _cancel_jobs(self, timeout: float = 30) -> None:
        """scancel every job and wait until the queue is empty (a job's processes get KillWait s to end)."""
        jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split()
        if not jobs:
            return
        self.run("scancel", *jobs, check=False, timeout=20)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split():
                return
            time.sleep(0.2)

    def _steps(self) -> list[int]:
        """slurmstepd processes on the lab's hosts, and everything they started."""
        pids = [p for h in self.lab.hosts for p in simlab._netns_pids(h.netns)]
        steps = [p for p in pids if _exe(p) == SLURMSTEPD]
        return steps + [p for p in pids if p not in steps and _has_ancestor(p, set(steps))]

    def _end_steps(self) -> None:
        steps = self._steps()
        if steps:
            simlab._end_processes(steps, grace_s=5)

    def _slurm_conf(self) -> str:
        nodes = "\n".join(f"NodeName={h.name} NodeAddr={h.address} CPUs={CPUS_PER_NODE} RealMemory=2000 State=UNKNOWN"
                          for h in self.lab.hosts)
        return f"""\
# The simulated lab's Slurm cluster (tests/simslurm.py); every path is this cluster's own.
ClusterName={self.lab.prefix}
SlurmctldHost={self.controller}({self.lab.gateway})
SlurmctldPort={self.port}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={self.dir / 'state'}
SlurmdSpoolDir={self.dir / 'spool'}/%n
SlurmctldPidFile={self.dir / 'slurmctld.pid'}
# Each host's own /run (STATE/<prefix>/hN/run on the machine).
SlurmdPidFile=/run/slurmd.pid
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
MinJobAge=10
KillWait=10
SlurmdTimeout={self.slurmd_timeout}
SchedulerParameters=sched_interval=5,bf_interval=5
{nodes}
PartitionName={PARTITION} Nodes={','.join(h.name for h in self.lab.hosts)} Default=YES MaxTime=INFINITE State=UP
"""

    def _log_tails(self) -> str:
        return "".join(f"\n--- the end of {log.name}:\n" + simlab._tail(log) for log in sorted((self.dir / "log").glob("*.log")))


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _has_ancestor(pid: int, ancestors: set[int]) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid in ancestors:
            return True
    return False


def running_lab() -> simlab.Lab:
    """The lab that is up, as LAUNCH_LAB_PREFIX / LAUNCH_LAB_SUBNET name it (the tests' llab by default)."""
    prefix = os.environ.get("LAUNCH_LAB_PREFIX") or "llab"
    subnet = int(os.environ.get("LAUNCH_LAB_SUBNET") or 7)
    hosts = len(list((simlab.STATE / prefix).glob("h*/holder.pid")))
    if not hosts:
        raise SystemExit(f"simslurm: lab {prefix} is not up; python3 tests/simlab.py up 3 first")
    return simlab.Lab(hosts=hosts, prefix=prefix, subnet=subnet)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status"):
        print(__doc__)
        return 2
    cluster = SlurmCluster(running_lab())
    if argv[0] == "down":
        cluster.down()
        print("slurm down")
        return 0
    if argv[0] == "status":
        print(cluster.leftovers())
        return 0
    started = time.monotonic()
    cluster.up()
    print(f"slurm up in {time.monotonic() - started:.1f} s: nodes {', '.join(h.name for h in cluster.lab.hosts)}, "
          f"partition {PARTITION}, slurmctld {cluster.lab.gateway}:{cluster.port}")
    print(f"export SLURM_CONF={cluster.conf}")
    print(f"shared folder: {cluster.shared_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
