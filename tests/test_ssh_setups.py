"""The SSH set-ups real labs have, on the simulated lab: an inventory that says only where the
hosts are, reached as `ssh host` reaches them (default keys, ssh-agent, ~/.ssh/config with aliases,
User, Port, IdentityFile, ProxyJump), with what the inventory sets explicitly winning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
