"""The SSH set-ups real labs have, on the simulated lab: an inventory that says only where the
hosts are, reached as `ssh host` reaches them (default keys, ssh-agent, ~/.ssh/config with aliases,
User, Port, IdentityFile, ProxyJump), with what the inventory sets explicitly winning."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, launch, spawn

pytestmark = pytest.mark.integration


@pytest.fixture
def sshlab(lab):
    """The session's lab (these tests change nothing on its hosts); they use its first two hosts."""
    return lab


def home_for(tmp_path: Path, sshlab, default_key: bool = True, config: str = "", known_hosts: bool = True) -> dict[str, str]:
    """A user's HOME with ~/.ssh as the test wants it; the environment to run `launch` with."""
    home = tmp_path / "home"
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    if default_key:
        shutil.copy(sshlab.client_key, ssh / "id_ed25519")
        os.chmod(ssh / "id_ed25519", 0o600)
    if known_hosts:
        shutil.copy(sshlab.known_hosts, ssh / "known_hosts")
    (ssh / "config").write_text(config)
    env = {"HOME": str(home), "LAUNCH_CACHE": str(tmp_path / "cache")}
    env.pop("SSH_AUTH_SOCK", None)
    return env


def inventory(tmp_path: Path, hosts: list[tuple[str, str]], extra: str = "") -> Path:
    lines = ["hosts:"]
    for name, address in hosts:
        lines += [f"  - name: {name}", f"    address: {address}", f"    python: {sys.executable}{extra}"]
    path = tmp_path / "cluster.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def check(tmp_path: Path, cluster: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "launcher", "check", str(cluster)], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=120)


def test_an_inventory_without_ssh_settings_uses_the_default_key(tmp_path: Path, sshlab) -> None:
    env = home_for(tmp_path, sshlab)
    result = check(tmp_path, inventory(tmp_path, [(h.name, h.address) for h in sshlab.hosts[:2]]), env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "2 of 2 host(s) usable"
    no_key = home_for(tmp_path / "nokey", sshlab, default_key=False)
    refused = check(tmp_path, inventory(tmp_path, [("h1", sshlab.hosts[0].address)]), no_key)
    assert refused.returncode == 1 and "Traceback" not in refused.stdout + refused.stderr
    assert "authentication failed" in refused.stdout and "ssh-agent" in refused.stdout


def test_ssh_agent_holds_the_key(tmp_path: Path, sshlab) -> None:
    env = home_for(tmp_path, sshlab, default_key=False)
    sock = tmp_path / "agent.sock"
    agent = spawn(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"])
        subprocess.run(["ssh-add", str(sshlab.client_key)], env=dict(os.environ, SSH_AUTH_SOCK=str(sock)), check=True,
                       capture_output=True)
        result = check(tmp_path, inventory(tmp_path, [("h1", sshlab.hosts[0].address)]), dict(env, SSH_AUTH_SOCK=str(sock)))
    finally:
        agent.terminate()
        agent.wait()
    assert result.returncode == 0, result.stdout + result.stderr


def alias_config(sshlab, key: Path, jump: bool = False, port: int = 22) -> str:
    h1, h2 = sshlab.hosts[:2]
    text = (f"Host alpha\n  HostName {h1.address}\n  User root\n  Port {port}\n  IdentityFile {key}\n"
            f"  UserKnownHostsFile {sshlab.known_hosts}\n"
            f"Host beta\n  HostName {h2.address}\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {sshlab.known_hosts}\n")
    return text + ("  ProxyJump alpha\n" if jump else "")


def test_ssh_config_aliases_user_port_identity_and_known_hosts(tmp_path: Path, sshlab) -> None:
    key = tmp_path / "lab_key"  # not a default name: only IdentityFile finds it
    shutil.copy(sshlab.client_key, key)
    os.chmod(key, 0o600)
    env = home_for(tmp_path, sshlab, default_key=False, known_hosts=False, config=alias_config(sshlab, key))
    result = check(tmp_path, inventory(tmp_path, [("h1", "alpha"), ("h2", "beta")]), env)
    assert result.returncode == 0, result.stdout + result.stderr
    # the inventory's own port wins over the config's
    explicit = check(tmp_path, inventory(tmp_path, [("h1", "alpha")], extra="\n    port: 2200"), env)
    assert explicit.returncode == 1 and f"root@{sshlab.hosts[0].address}:2200" in explicit.stdout, explicit.stdout


def test_a_run_through_aliases_and_a_jump_host(tmp_path: Path, sshlab) -> None:
    """h2 is reached only through h1 (ProxyJump); ranks meet at the address the alias stands for."""
    key = tmp_path / "lab_key"
    shutil.copy(sshlab.client_key, key)
    os.chmod(key, 0o600)
    env = home_for(tmp_path, sshlab, default_key=False, known_hosts=False, config=alias_config(sshlab, key, jump=True))
    cluster = inventory(tmp_path, [("h1", "alpha"), ("h2", "beta")])
    work = tmp_path / "job"
    work.mkdir()
    shutil.copy(ROOT / "jobs/allreduce/train.py", work / "train.py")
    (work / "job.yaml").write_text(f"name: jumped\ncluster: {cluster}\nnproc_per_node: 1\nbackend: gloo\nruntime: host\n"
                                   "command: [python, train.py, --steps, '3']\ntimeout: 3m\n")
    sshlab.cut_launcher("h2")
    try:
        checked = check(tmp_path, cluster, env)
        result = launch(str(work / "job.yaml"), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, env=env, timeout=240)
    finally:
        sshlab.restore_launcher("h2")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run = next((tmp_path / "runs").glob("jumped-*"))
    plan = json.loads((run / "plan.json").read_text())
    assert plan["master_addr"] == sshlab.hosts[0].address  # the HostName, not the alias the other host cannot resolve
    assert "[h2/1] allreduce: rank 1 of 2" in result.stdout


def test_a_jump_host_whose_key_is_unknown_is_refused(tmp_path: Path, sshlab) -> None:
    key = tmp_path / "lab_key"
    shutil.copy(sshlab.client_key, key)
    os.chmod(key, 0o600)
    h1, h2 = sshlab.hosts[:2]
    only_h2 = tmp_path / "known_h2"
    only_h2.write_text("".join(line + "\n" for line in sshlab.known_hosts.read_text().splitlines() if h1.address not in line))
    config = (f"Host alpha\n  HostName {h1.address}\n  IdentityFile {key}\n  UserKnownHostsFile {only_h2}\n"
              f"Host beta\n  HostName {h2.address}\n  IdentityFile {key}\n  ProxyJump alpha\n  UserKnownHostsFile {only_h2}\n")
    env = home_for(tmp_path, sshlab, default_key=False, known_hosts=False, config=config)
    result = check(tmp_path, inventory(tmp_path, [("h2", "beta")]), env)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"the host key of {h1.address} is not in {only_h2}" in result.stdout, result.stdout


def _sshd_serving(sshlab, host: str, conn) -> list[int]:
    """The host's sshd processes that serve `conn` (found by its local port in the host's own
    network namespace): the lab started them."""
    port = conn.client.get_transport().sock.getsockname()[1]
    holder = sshlab.host(host).holder_pid_file.read_text().strip()
    out = subprocess.run(["nsenter", "--target", holder, "--net", "ss", "-tnpH", "state", "established",
                          f"( sport = :22 and dport = :{port} )"], capture_output=True, text=True, check=True).stdout
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})


def test_a_connection_the_host_closes_is_opened_again_for_the_next_command_never_for_a_running_one(sshlab) -> None:
    from launcher.errors import RunError
    from launcher.hosts.ssh import connect, run
    from launcher.spec import load_cluster

    host = load_cluster(sshlab.cluster_file).hosts[0]
    conn = connect(host)
    try:
        marker = f"/tmp/launch-reopen-{os.getpid()}"
        run(conn, ["rm", "-f", marker])
        # a command running when the host closes the connection fails, and is not run again
        serving = _sshd_serving(sshlab, host.name, conn)
        assert serving, "no sshd found for the connection"
        killer = threading.Timer(1.0, lambda: [os.kill(pid, signal.SIGKILL) for pid in serving])
        killer.start()
        with pytest.raises(RunError, match=r"SSH failed|took longer"):
            run(conn, ["sh", "-c", 'echo x >> "$0"; sleep 8', marker], timeout=15)
        deadline = time.monotonic() + 10
        while conn.client.get_transport().is_active() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not conn.client.get_transport().is_active()
        # the next command gets the connection opened again
        code, out = run(conn, ["cat", marker])
        assert (code, out) == (0, "x\n"), (code, out)  # the interrupted command ran once
        assert _sshd_serving(sshlab, host.name, conn) and set(_sshd_serving(sshlab, host.name, conn)).isdisjoint(serving)
        run(conn, ["rm", "-f", marker])
    finally:
        conn.close()


def test_threads_sharing_a_hosts_sftp_session_each_get_their_own_answers(sshlab) -> None:
    """Lease renewals and reads of a node's output share one SFTP session per host, from several
    threads: each must get its own answer (paramiko's client, shared unguarded, hands one thread's
    answer to another, which then waits for its own until it times out)."""
    from launcher.backends.ssh import SshBackend
    from launcher.spec import load_cluster

    host = load_cluster(sshlab.cluster_file).hosts[0]
    folder = f"/tmp/launch-sftp-{os.getpid()}"
    sizes = {f"{folder}/f{i}": 100 + i for i in range(4)}
    sshlab.ssh(host.name, " && ".join([f"mkdir -p {folder}"] + [f"head -c {n} /dev/zero > {p}" for p, n in sizes.items()]))
    backend = SshBackend({host.name: host}, None, "run")  # type: ignore[arg-type]
    wrong: list[str] = []

    def ask(path: str) -> None:
        for _ in range(150):
            try:
                with backend._sftp(host.name) as sftp:
                    size = sftp.stat(path).st_size
            except Exception as exc:  # noqa: BLE001 - what went wrong is the test's result
                wrong.append(f"{path}: {type(exc).__name__} {exc}")
                return
            if size != sizes[path]:
                wrong.append(f"{path}: {size} bytes")

    try:
        threads = [threading.Thread(target=ask, args=(path,)) for path in sizes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads) and not wrong, wrong[:5]
    finally:
        backend.close()
        sshlab.ssh(host.name, f"rm -rf {folder}")


def test_many_short_commands_at_once_on_one_connection_all_succeed_and_keep_it(sshlab) -> None:
    """Commands that end as soon as they start, from many threads over one connection: none fails,
    and the connection is never dropped by the host (an end of input sent after paramiko's CLOSE makes
    OpenSSH drop the whole connection)."""
    from launcher.errors import RunError
    from launcher.hosts.ssh import connect, run
    from launcher.spec import load_cluster

    host = load_cluster(sshlab.cluster_file).hosts[1]
    conn = connect(host)
    transport = conn.client.get_transport()
    failures: list[str] = []

    def many() -> None:
        for _ in range(60):
            try:
                code, out = run(conn, ["true"])
                if code != 0:
                    failures.append(f"exit {code}: {out}")
            except RunError as exc:
                failures.append(str(exc))

    try:
        threads = [threading.Thread(target=many) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads) and not failures, failures[:3]
        assert conn.client.get_transport() is transport and transport.is_active()  # never dropped, never opened again
    finally:
        conn.close()
