"""A simulated lab on one machine: several SSH hosts, each with its own address and Docker engine.

Each host is a network namespace on a bridge, with a private mount and UTS namespace (its own /tmp,
/run, /root, /var/lib/docker, /etc/docker, /etc/hosts and /etc/resolv.conf, and a hostname that resolves to
nothing), its own sshd (key authentication only, fresh host keys) and its own dockerd. The image
store of each host persists between bring-ups under STATE/<prefix>-hN/docker, so a base image is
loaded into a host once. Everything else is made anew by `up` and removed by `down`.

    python tests/simlab.py up 3      # bring up h1..h3 and print how to reach them
    python tests/simlab.py down      # take everything down (also after a crash)
See tests/LAB.md.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STATE = Path(os.environ.get("LAUNCH_LAB_STATE", "/var/lib/launch-lab"))
SSH_USER = "root"


def sh(*argv: str, check: bool = True, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, input=input, capture_output=True, timeout=timeout)


@dataclass(frozen=True)
class SimHost:
    name: str  # h1, h2, ...
    address: str
    netns: str
    veth: str  # the bridge side of the host's link
    dir: Path  # this bring-up's files of the host
    data_root: Path  # the host's image store, kept between bring-ups

    @property
    def docker_socket(self) -> Path:
        """The host's engine, as seen from the machine (it is /run/docker.sock inside the host)."""
        return self.dir / "run" / "docker.sock"

    @property
    def holder_pid_file(self) -> Path:
        return self.dir / "holder.pid"


class Lab:
    """Up to 8 hosts named h1..hN on the bridge `<prefix>0`, addresses 10.77.<subnet>.11 and up."""

    def __init__(self, hosts: int = 3, prefix: str = "llab", subnet: int = 7) -> None:
        if not 1 <= hosts <= 8:
            raise ValueError("a lab has 1 to 8 hosts")
        self.prefix = prefix
        self.bridge = f"{prefix}0"
        self.gateway = f"10.77.{subnet}.1"
        self.dir = STATE / prefix
        self.hosts = [
            SimHost(
                name=f"h{i}",
                address=f"10.77.{subnet}.{10 + i}",
                netns=f"{prefix}-h{i}",
                veth=f"{prefix}-h{i}",
                dir=self.dir / f"h{i}",
                data_root=STATE / f"{prefix}-h{i}" / "docker",
            )
            for i in range(1, hosts + 1)
        ]

    # ---- paths the tests and the launcher use
    @property
    def client_key(self) -> Path:
        return self.dir / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def cluster_file(self) -> Path:
        return self.dir / "cluster.yaml"

    def host(self, name: str) -> SimHost:
        return next(h for h in self.hosts if h.name == name)

    # ---- bring-up and teardown
    def up(self) -> "Lab":
        """Bring every host up (after removing what an earlier crashed lab left), then wait for them."""
        cleanup(self.prefix)
        self.dir.mkdir(parents=True)
        try:
            self._network()
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "launch-lab-client", "-f", str(self.client_key))
            shutil.copy(self.client_key.with_suffix(".pub"), self.dir / "authorized_keys")
            for host in self.hosts:
                self._host_files(host)
            self._write_known_hosts()
            errors: list[BaseException] = []

            def start(host: SimHost) -> None:
                try:
                    self._start_host(host)
                except BaseException as exc:  # reported below, for every host
                    errors.append(exc)

            threads = [threading.Thread(target=start, args=(h,)) for h in self.hosts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            self._write_cluster()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        cleanup(self.prefix)

    def _network(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        if shutil.which("iptables"):
            # dockerd sets FORWARD's policy to DROP, and bridged frames pass through iptables.
            sh("iptables", "-I", "FORWARD", "1", *_forward_rule(self.bridge))
        for host in self.hosts:
            sh("ip", "netns", "add", host.netns)
            sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            sh("ip", "link", "set", host.veth, "master", self.bridge)
            sh("ip", "link", "set", host.veth, "up")
            sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", host.netns, "link", "set", "lo", "up")

    def _host_files(self, host: SimHost) -> None:
        for sub in ("tmp", "var-tmp", "run", "root", "etc/docker"):
            (host.dir / sub).mkdir(parents=True)
        (host.dir / "tmp").chmod(0o1777)
        (host.dir / "var-tmp").chmod(0o1777)
        (host.dir / "run" / "sshd").mkdir()
        host.data_root.mkdir(parents=True, exist_ok=True)
        for target in ("/etc/docker", "/var/lib/docker"):  # mount points for the host's own copies
            Path(target).mkdir(parents=True, exist_ok=True)
        # No entry for the host's own name, and a resolver that answers "refused" at once.
        (host.dir / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
        (host.dir / "etc" / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.dir / "ssh_host_ed25519_key"))
        (host.dir / "sshd_config").write_text(_sshd_config(host, self.dir / "authorized_keys", self.dir / "slurm" / "slurm.conf"))

    def _start_host(self, host: SimHost) -> None:
        binds = [
            (host.dir / "etc" / "hosts", "/etc/hosts"),
            (host.dir / "etc" / "resolv.conf", "/etc/resolv.conf"),
            (host.dir / "etc" / "docker", "/etc/docker"),
            (host.dir / "tmp", "/tmp"),
            (host.dir / "var-tmp", "/var/tmp"),  # each host its own: job copies and checkpoints live there
            (host.dir / "root", "/root"),
            (host.data_root, "/var/lib/docker"),
            (host.dir / "run", "/run"),  # last: the paths above must stay reachable while mounting
        ]
        # The machine's Python (and the project's venv) stay visible on the hosts, as labs share a
        # toolchain: bound into the host's own /root or /tmp before those are mounted over.
        shared = []
        for path in _shared_toolchain():
            parent = "/root" if path.is_relative_to("/root") else "/tmp"
            inner = host.dir / parent.lstrip("/") / path.relative_to(parent)
            shared.append(f"mkdir -p {shlex.quote(str(inner))}; mount --bind {shlex.quote(str(path))} {shlex.quote(str(inner))}")
        setup = "; ".join(shared + [f"mount --rbind {shlex.quote(str(src))} {dst}" for src, dst in binds])
        script = f"set -e; hostname lab-{host.name}; {setup}; echo ready; exec sleep infinity"
        holder = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{host.netns}", "--",
             "unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"lab {host.name}: namespace set-up failed: {holder.stderr.read().decode() if holder.stderr else ''}")
        host.holder_pid_file.write_text(str(holder.pid))
        self.start_services(host)

    def _enter(self, host: SimHost) -> list[str]:
        pid = host.holder_pid_file.read_text().strip()
        return ["nsenter", f"--target={pid}", "--mount", "--uts", "--net", "--"]

    def start_services(self, host: SimHost, timeout: float = 60) -> None:
        """Start the host's dockerd and sshd (again, where they are not up) and wait until both answer.

        A dockerd that was told to stop closes its socket long before it ends (it stops its
        containerd first); a new one started meanwhile finds the old one's pid file and exits."""
        deadline = time.monotonic() + timeout
        old = host.dir / "run" / "docker.pid"
        pid = old.read_text().strip() if old.exists() else ""
        services = {"dockerd.log": ["dockerd", "--host=unix:///run/docker.sock", "--data-root=/var/lib/docker"],
                    "sshd.log": ["/usr/sbin/sshd", "-D", "-e", "-f", str(host.dir / "sshd_config")]}
        while pid.isdigit() and _running(int(pid)) and time.monotonic() < deadline:
            if self._docker_answers(host):  # up, not stopping: it stays
                del services["dockerd.log"]
                break
            time.sleep(0.2)
        if "dockerd.log" in services:
            host.docker_socket.unlink(missing_ok=True)
        for log, argv in services.items():  # a second sshd finds the port taken and exits
            with open(host.dir / log, "ab") as out:
                subprocess.Popen(self._enter(host) + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        while time.monotonic() < deadline:
            if self._docker_answers(host) and self.ssh(host.name, "true", check=False, timeout=5).returncode == 0:
                return
            time.sleep(0.2)
        tails = "".join(f"\n--- the end of {log}:\n" + _tail(host.dir / log) for log in ("dockerd.log", "sshd.log"))
        raise RuntimeError(f"lab {host.name}: dockerd or sshd did not come up in {timeout:.0f} s{tails}")

    def _docker_answers(self, host: SimHost) -> bool:
        return self.docker(host.name, "version", check=False, timeout=20).returncode == 0

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.hosts:
            kind, key = (host.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            lines.append(f"{host.address} {kind} {key}\n")
        self.known_hosts.write_text("".join(lines))

    def _write_cluster(self) -> None:
        lines = [
            "# The simulated lab (tests/simlab.py); addresses are its own network namespaces.",
            "ssh:",
            f"  user: {SSH_USER}",
            f"  identity_file: {self.client_key}",
            f"  known_hosts: {self.known_hosts}",
            "  host_key_policy: strict",
            "hosts:",
        ]
        for host in self.hosts:
            lines += [f"  - name: {host.name}", f"    address: {host.address}", "    gpus: 0", "    slots: 1", "    nic: eth0"]
        self.cluster_file.write_text("\n".join(lines) + "\n")

    # ---- using the hosts
    def ssh_argv(self, host: str, command: str) -> list[str]:
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.client_key),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"{SSH_USER}@{self.host(host).address}", command,
        ]

    def ssh(self, host: str, command: str, check: bool = True, timeout: float = 60, input: bytes | None = None) -> subprocess.CompletedProcess:
        return sh(*self.ssh_argv(host, command), check=check, timeout=timeout, input=input)

    def docker(self, host: str, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """The docker CLI against one host's engine, from the machine (no SSH)."""
        return sh("docker", "-H", f"unix://{self.host(host).docker_socket}", *args, check=check, timeout=timeout)

    def ensure_image(self, tag: str) -> dict[str, float]:
        """Load `tag` from the machine's engine into every host whose store lacks its image ID.

        Returns the seconds each load took, by host; hosts that had it are not listed.
        """
        want = sh("docker", "image", "inspect", "--format", "{{.Id}}", tag).stdout.decode().strip()
        lacking = []
        for host in self.hosts:
            has = self.docker(host.name, "image", "inspect", "--format", "{{.Id}}", want, check=False)
            if has.returncode != 0:
                lacking.append(host)
            else:
                self.docker(host.name, "tag", want, tag)
        loaded: dict[str, float] = {}
        errors: dict[str, str] = {}

        def load(host: SimHost) -> None:
            start = time.monotonic()
            save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
            result = subprocess.run(["docker", "-H", f"unix://{host.docker_socket}", "load", "-q"], stdin=save.stdout,
                                    capture_output=True)
            assert save.stdout is not None
            save.stdout.close()
            if save.wait() != 0 or result.returncode != 0:
                errors[host.name] = result.stderr.decode(errors="replace").strip()[-300:]
            loaded[host.name] = time.monotonic() - start

        threads = [threading.Thread(target=load, args=(h,)) for h in lacking]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"lab: loading {tag} failed: {errors}")
        return loaded

    # ---- faults
    def cut_link(self, host: str) -> None:
        """The host keeps running but nothing reaches it, as when its cable is pulled."""
        sh("ip", "link", "set", self.host(host).veth, "down")

    def restore_link(self, host: str) -> None:
        sh("ip", "link", "set", self.host(host).veth, "up")

    def cut_launcher(self, host: str) -> None:
        """Only this machine (the launcher's side) loses the host; the hosts still reach each other
        (their traffic is bridged through FORWARD, which these rules leave alone)."""
        address = self.host(host).address
        sh("iptables", "-I", "OUTPUT", "1", *_launcher_rule("-d", address, self.prefix))
        sh("iptables", "-I", "INPUT", "1", *_launcher_rule("-s", address, self.prefix))

    def restore_launcher(self, host: str) -> None:
        address = self.host(host).address
        sh("iptables", "-D", "OUTPUT", *_launcher_rule("-d", address, self.prefix), check=False)
        sh("iptables", "-D", "INPUT", *_launcher_rule("-s", address, self.prefix), check=False)

    def stop_host(self, host: str) -> None:
        """Power the host off: every process of it ends (containers too) and its link goes down."""
        h = self.host(host)
        holder = int(h.holder_pid_file.read_text())
        _end_processes(_netns_pids(h.netns, exclude={holder}))
        self.cut_link(host)

    def start_host(self, host: str) -> None:
        self.restore_link(host)
        self.start_services(self.host(host))


def processes_of_run(run_id: str) -> list[int]:
    """PIDs of live processes whose environment carries this run's LAUNCH_RUN_ID."""
    marker = f"LAUNCH_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _shared_toolchain() -> list[Path]:
    """What of this machine's Python lives under a per-host folder (/root, /tmp) and must be shared.

    Each host has its own /root and /tmp; without this, a virtualenv made from a pyenv Python, or a
    venv inside a checkout under /tmp, would not run on the hosts (runtime: host uses them there).
    """
    found = []
    for path in (Path(os.path.realpath(sys.executable)), Path(sys.prefix).resolve()):
        for root in (Path("/root/.pyenv"), Path("/tmp"), Path("/root")):
            if path.is_relative_to(root):
                share = root if root.name == ".pyenv" else Path(sys.prefix).resolve()
                if share not in found:
                    found.append(share)
                break
    return found


def _launcher_rule(direction: str, address: str, prefix: str) -> list[str]:
    return [direction, address, "-j", "DROP", "-m", "comment", "--comment", f"launch-lab {prefix} launcher-cut"]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _forward_rule(bridge: str) -> list[str]:
    return ["-i", bridge, "-o", bridge, "-j", "ACCEPT", "-m", "comment", "--comment", f"launch-lab {bridge}"]


def _sshd_config(host: SimHost, authorized_keys: Path, slurm_conf: Path) -> str:
    """Key authentication only; SSH sessions get the config of the lab's Slurm cluster (tests/simslurm.py),
    as a cluster's login node has it in /etc/slurm."""
    return f"""\
SetEnv SLURM_CONF={slurm_conf}
ListenAddress {host.address}
Port 22
HostKey {host.dir / 'ssh_host_ed25519_key'}
PidFile /run/sshd.pid
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
"""


def _netns_pids(netns: str, exclude: set[int] = frozenset()) -> list[int]:
    """Every process whose network namespace is `netns`, the lab host's processes and containers."""
    try:
        inode = os.stat(f"/run/netns/{netns}").st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude:
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _end_processes(pids: list[int], grace_s: float = 10) -> None:
    """SIGTERM (dockerd then writes its store cleanly), then SIGKILL what is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def daemons_dir(prefix: str) -> Path:
    """Pid files of what runs beside a lab's hosts, outside their namespaces (a Slurm controller,
    munged): `cleanup` ends these by PID, as it ends everything inside the hosts' namespaces."""
    return STATE / prefix / "daemons"


def record_daemon(prefix: str, name: str, pid: int) -> None:
    """Note a process started for the lab; its start time guards against ending a reused PID later."""
    daemons_dir(prefix).mkdir(parents=True, exist_ok=True)
    (daemons_dir(prefix) / f"{name}.pid").write_text(f"{pid} {_start_time(pid)}\n")


def forget_daemon(prefix: str, name: str) -> None:
    (daemons_dir(prefix) / f"{name}.pid").unlink(missing_ok=True)
    try:
        daemons_dir(prefix).rmdir()  # the last one
    except OSError:
        pass


def recorded_daemons(prefix: str) -> dict[str, int]:
    """The recorded processes still running, by name (a PID now naming another process is left out)."""
    found = {}
    for pid_file in sorted(daemons_dir(prefix).glob("*.pid")):
        fields = pid_file.read_text().split()
        if len(fields) == 2 and fields[0].isdigit() and _alive(int(fields[0])) and _start_time(int(fields[0])) == fields[1]:
            found[pid_file.stem] = int(fields[0])
    return found


def daemon_processes(prefix: str, names: set[str] | None = None) -> list[int]:
    """The recorded daemons still running (those of `names`, or all) and whatever else runs in their
    sessions (each was started as a session's leader): a helper a daemon forked ends with it."""
    leaders = {pid for name, pid in recorded_daemons(prefix).items() if names is None or name in names}
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in leaders:
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) in leaders and fields[0] not in ("Z", "X"):
                members.append(int(entry))
    return sorted(leaders) + members


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def leftovers(prefix: str = "llab") -> dict[str, list[str]]:
    """What a lab with this prefix has on the machine now: namespaces, links, iptables rules, processes
    (those in the hosts' namespaces and the recorded daemons beside them)."""
    netns = [line.split()[0] for line in sh("ip", "netns", "list").stdout.decode().splitlines()
             if line.startswith(f"{prefix}-")]
    links = [line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link", "show").stdout.decode().splitlines()
             if line.split(":")[1].strip().startswith(prefix)]
    rules = []
    if shutil.which("iptables"):
        rules = [r for r in sh("iptables", "-S", "FORWARD").stdout.decode().splitlines() if f"launch-lab {prefix}0" in r]
        rules += [r for chain in ("INPUT", "OUTPUT") for r in sh("iptables", "-S", chain).stdout.decode().splitlines()
                  if f"launch-lab {prefix} launcher-cut" in r]
    procs = [str(p) for ns in netns for p in _netns_pids(ns)]
    procs += [str(p) for p in daemon_processes(prefix) if str(p) not in procs]
    return {"netns": netns, "links": links, "iptables": rules, "processes": procs}


def cleanup(prefix: str = "llab") -> None:
    """Remove everything a lab with this prefix left, whether it was taken down or crashed."""
    found = leftovers(prefix)
    lab_dir = STATE / prefix
    for ns in found["netns"]:
        sock = lab_dir / ns.removeprefix(f"{prefix}-") / "run" / "docker.sock"
        if sock.exists():  # let the engine stop its containers while it still can
            ids = sh("docker", "-H", f"unix://{sock}", "ps", "-aq", check=False, timeout=20).stdout.decode().split()
            if ids:
                sh("docker", "-H", f"unix://{sock}", "rm", "-f", *ids, check=False, timeout=60)
    pids = [p for ns in found["netns"] for p in _netns_pids(ns)]
    holders = [int(p.read_text()) for p in lab_dir.glob("h*/holder.pid") if p.read_text().strip().isdigit()]
    _end_processes(daemon_processes(prefix) + pids)
    _end_processes([p for p in holders if _alive(p) and _is_holder(p)], grace_s=2)
    for ns in found["netns"]:
        sh("ip", "netns", "delete", ns, check=False)
    for link in leftovers(prefix)["links"]:
        sh("ip", "link", "delete", link, check=False)
    if shutil.which("iptables"):
        while sh("iptables", "-D", "FORWARD", *_forward_rule(f"{prefix}0"), check=False).returncode == 0:
            pass
        for rule in found["iptables"]:
            if "launcher-cut" in rule:  # "-A CHAIN ...": delete it as it was written
                sh("iptables", *shlex.split(rule.replace("-A ", "-D ", 1)), check=False)
    shutil.rmtree(lab_dir, ignore_errors=True)


def _is_holder(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"infinity"]
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status"):
        print(__doc__)
        return 2
    if argv[0] == "down":
        cleanup()
        print("lab down")
        return 0
    if argv[0] == "status":
        print(json.dumps(leftovers(), indent=2))
        return 0
    lab = Lab(hosts=int(argv[1]) if len(argv) > 1 else 3)
    started = time.monotonic()
    lab.up()
    if len(argv) > 2:
        lab.ensure_image(argv[2])
    print(f"lab up in {time.monotonic() - started:.1f} s: {', '.join(f'{h.name}={h.address}' for h in lab.hosts)}")
    print(f"inventory: {lab.cluster_file}")
    print(f"ssh:       {shlex.join(lab.ssh_argv('h1', 'docker info'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
