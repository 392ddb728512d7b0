"""The simulated lab itself: real sshd and dockerd per host, own addresses, faults on demand."""

from __future__ import annotations

import subprocess
import time

import pytest

import simlab
from conftest import lab_names

pytestmark = pytest.mark.integration


def tcp_probe(address: str, port: int = 22) -> str:
    return f"timeout 3 bash -c 'echo > /dev/tcp/{address}/{port}'"


def test_hosts_reach_each_other_by_address(lab) -> None:
    for src in lab.hosts:
        for dst in lab.hosts:
            if src is not dst:
                assert lab.ssh(src.name, tcp_probe(dst.address), check=False).returncode == 0, (src.name, dst.name)


def test_ssh_reaches_each_hosts_own_engine(lab) -> None:
    names = {h.name: lab.ssh(h.name, "docker info --format '{{.Name}} {{.ID}}'").stdout.decode().split() for h in lab.hosts}
    assert {h: n[0] for h, n in names.items()} == {h.name: f"lab-{h.name}" for h in lab.hosts}
    assert len({n[1] for n in names.values()}) == len(lab.hosts), "every engine has its own identity"
    tag = "launch-lab-probe:only-on-h1"
    lab.ssh("h1", f"tar -c -T /dev/null | docker import - {tag}")
    try:
        assert lab.ssh("h1", f"docker image inspect {tag}", check=False).returncode == 0
        assert lab.ssh("h2", f"docker image inspect {tag}", check=False).returncode != 0
        assert lab.docker("h3", "image", "inspect", tag, check=False).returncode != 0
    finally:
        lab.ssh("h1", f"docker rmi {tag}", check=False)


def test_each_host_has_its_own_files(lab) -> None:
    lab.ssh("h1", "echo h1 > /tmp/launch-lab-file")
    try:
        assert lab.ssh("h1", "cat /tmp/launch-lab-file").stdout == b"h1\n"
        assert lab.ssh("h2", "test -e /tmp/launch-lab-file", check=False).returncode == 1
    finally:
        lab.ssh("h1", "rm -f /tmp/launch-lab-file")


def test_a_host_network_container_sees_its_hosts_address(lab, base_image: str) -> None:
    probe = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             f"s.connect(('{lab.gateway}', 9)); print(s.getsockname()[0])")
    for host in lab.hosts[:2]:
        out = lab.ssh(host.name, f"docker run --rm --network host {base_image} python -c \"{probe}\"").stdout.decode()
        assert out.strip() == host.address


def test_hostnames_do_not_resolve_and_fail_fast(lab) -> None:
    started = time.monotonic()
    result = lab.ssh("h1", "getent hosts $(hostname)", check=False)
    assert result.returncode != 0 and result.stdout == b""
    assert time.monotonic() - started < 3


def test_a_stopped_host_is_unreachable_until_started(lab, base_image: str) -> None:
    lab.ssh("h3", f"docker run -d --rm --network host {base_image} sleep 600")
    lab.stop_host("h3")
    try:
        assert lab.ssh("h3", "true", check=False, timeout=20).returncode == 255
        assert subprocess.run(lab.ssh_argv("h1", tcp_probe(lab.host("h3").address)), capture_output=True).returncode != 0
        holder = int(lab.host("h3").holder_pid_file.read_text())
        assert simlab._netns_pids(lab.host("h3").netns, exclude={holder}) == [], "no process of h3 survives"
    finally:
        lab.start_host("h3")
    assert lab.ssh("h3", "docker info --format '{{.Name}}'").stdout == b"lab-h3\n"


def test_a_cut_link_isolates_a_running_host(lab) -> None:
    lab.cut_link("h2")
    try:
        assert lab.ssh("h2", "true", check=False, timeout=20).returncode == 255
        assert lab.ssh("h1", tcp_probe(lab.host("h2").address), check=False).returncode != 0
        holder = int(lab.host("h2").holder_pid_file.read_text())
        assert simlab._netns_pids(lab.host("h2").netns, exclude={holder}), "h2's processes keep running"
    finally:
        lab.restore_link("h2")
    assert lab.ssh("h2", "true").returncode == 0


TINY_IMAGE = "launch-lab-tiny:sleep"
# An image of /usr/bin/sleep and the libraries it needs, made on the host from its own files.
MAKE_TINY_IMAGE = (
    "tar -chf - -C / $(ldd /usr/bin/sleep | grep -o '/[^ ]*' | sed 's|^/||') usr/bin/sleep 2>/dev/null "
    f"| docker import - {TINY_IMAGE}"
)


def test_teardown_and_crash_cleanup_leave_nothing(base_image: str) -> None:
    prefix, subnet = lab_names(spare=True)
    first = simlab.Lab(hosts=2, prefix=prefix, subnet=subnet).up()
    first.ssh("h1", MAKE_TINY_IMAGE)
    first.ssh("h1", f"docker run -d --network host {TINY_IMAGE} /usr/bin/sleep 600")
    assert first.ssh("h1", "docker ps -q").stdout.strip()
    holders = [int(h.holder_pid_file.read_text()) for h in first.hosts]
    # A crashed run leaves its lab behind; the next bring-up removes it before starting.
    second = simlab.Lab(hosts=1, prefix=prefix, subnet=subnet).up()
    assert not any(simlab._alive(pid) for pid in holders)
    assert second.ssh("h1", "docker ps -q").stdout == b"", "the old container was removed"
    assert simlab.leftovers(prefix)["netns"] == [f"{prefix}-h1"]
    second.down()
    assert simlab.leftovers(prefix) == {"netns": [], "links": [], "iptables": [], "processes": []}
