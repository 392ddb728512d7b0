"""The image's fan-out on the simulated lab, with the launching machine's link limited (a token
bucket on the lab's bridge shapes only what this machine sends; the hosts' traffic to each other is
bridged past it): the layers the hosts lack leave this machine once, a host cut off mid-transfer is
named while the others get the image, and no relay is left listening."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, lab_job, launch, start_launcher

pytestmark = pytest.mark.integration

BALLAST = 96_000_000  # bytes of incompressible data in the layer the hosts lack
COUNTING = 78_888_897  # bytes of `seq 1 10000000` beside it: gzip makes them a quarter


@pytest.fixture(scope="module")
def ballast_base(base_image: str) -> str:
    """The lab's base image and one layer more, built here: the hosts have the base, not this layer."""
    tag = "launch-fanout-base:test"
    dockerfile = f"FROM {base_image}\nRUN head -c {BALLAST} /dev/urandom > /ballast && seq 1 10000000 > /counting\n"
    result = subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile.encode(), capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    return tag


@pytest.fixture
def slow_link(lab):
    """This machine's link to the lab at 200 Mbit/s (its sends only)."""
    subprocess.run(["tc", "qdisc", "add", "dev", lab.bridge, "root", "tbf", "rate", "200mbit", "burst", "256kb",
                    "latency", "400ms"], check=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", lab.bridge, "root"], check=False)


@pytest.fixture
def cold_hosts(lab, base_image: str, ballast_base: str):
    """Hosts that hold the base image and nothing built on it; so again afterwards."""
    def forget() -> None:
        for host in lab.hosts:
            tags = lab.docker(host.name, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split()
            extra = [t for t in tags if t != base_image]
            if extra:
                lab.docker(host.name, "image", "rm", "-f", *extra, check=False)
    forget()
    yield
    forget()


def bytes_out(lab) -> int:
    return int(Path(f"/sys/class/net/{lab.bridge}/statistics/tx_bytes").read_text())


def bytes_to(lab, host: str) -> int:
    """What the host's link has carried to it, from this machine or another host."""
    return int(Path(f"/sys/class/net/{lab.host(host).veth}/statistics/tx_bytes").read_text())


def listeners(lab, host: str) -> set[str]:
    """The host's listening TCP sockets, asked in its own network namespace (not over SSH, which a cut link stops)."""
    holder = lab.host(host).holder_pid_file.read_text().strip()
    out = subprocess.run(["nsenter", "--target", holder, "--net", "ss", "-ltnH"], capture_output=True, check=True).stdout.decode()
    return {line.split()[3] for line in out.splitlines() if line.strip()}


def fanout_job(tmp_path: Path, lab, base: str, cluster: Path | None = None) -> Path:
    job = lab_job(tmp_path, lab, base, ROOT / "tests/jobs/probe.py", ["--steps", "2"])
    if cluster is not None:
        job.write_text(job.read_text().replace(f"cluster: {lab.cluster_file}", f"cluster: {cluster}"))
    return job


def local_id(tag: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, check=True).stdout.decode().strip()


def job_tag(out: str) -> str:
    """The job image's tag, from the launcher's `image TAG (built)` line."""
    found = [line.split()[1] for line in out.splitlines() if line.startswith("image ") and line.rstrip().endswith(")")]
    assert found, out[-2000:]
    return found[-1]


def ids_on_hosts(lab, tag: str) -> dict[str, str | None]:
    found = {}
    for host in lab.hosts:
        result = lab.docker(host.name, "image", "inspect", "--format", "{{.Id}}", tag, check=False)
        found[host.name] = result.stdout.decode().strip() if result.returncode == 0 else None
    return found


def test_a_cold_launch_to_three_hosts_sends_the_missing_layers_and_the_workdir_out_once(
        tmp_path: Path, lab, ballast_base: str, cold_hosts, slow_link) -> None:
    """Fresh hosts that lack the same 175 MB layer and the same 70 MB workdir: both leave this machine
    once (by hand: 3 times), the layer compressed where it can be (the link is the bottleneck), and
    every host ends with the same image and the same files."""
    job = fanout_job(tmp_path, lab, ballast_base)
    data = os.urandom(70_000_000)
    (job.parent / "data.bin").write_bytes(data)
    job.write_text(job.read_text().replace("name: lab-probe", f"name: fanout-{os.urandom(4).hex()}"))  # copies of its own
    dry = launch(str(job), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    image_lines = [line for line in dry.stdout.splitlines() if ": image: lacks it" in line]
    assert [line.split(":")[0] for line in image_lines] == ["h1", "h2", "h3"], dry.stdout
    assert image_lines[2].endswith("relayed: this machine -> h1 -> h2 -> h3"), dry.stdout
    assert "relayed: this machine -> h1 -> h2 -> h3" in dry.stdout.split("h3: workdir")[1], dry.stdout
    before = {h.name: listeners(lab, h.name) for h in lab.hosts}
    sent_before = bytes_out(lab)
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    sent = bytes_out(lab) - sent_before
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    whole = BALLAST + COUNTING + len(data)
    assert sent <= 1.2 * whole, f"{sent} bytes left this machine for {whole} bytes on 3 hosts"
    # sent whole, the counting file would add its 79 MB (and the packets' headers 1%)
    assert sent < 1.03 * (BALLAST + len(data)) + COUNTING / 2, f"{sent} bytes left this machine: not compressed"
    assert re.search(r"^h2: received [\d.]+ MB \(compressed from [\d.]+ MB\) from h1 \(a chain of hosts\)", result.stdout,
                     re.M), result.stdout
    assert re.search(r"^h3: workdir \w+: received \d+ file\(s\) from h2 \(a chain of hosts\)", result.stdout, re.M), result.stdout
    assert "down the chain this machine -> h1 -> h2 -> h3" in result.stdout
    tag = job_tag(result.stdout)
    assert set(ids_on_hosts(lab, tag).values()) == {local_id(tag)}
    digest = hashlib.sha256(data).hexdigest()
    for host in lab.hosts:
        found = lab.ssh(host.name, "sha256sum /var/tmp/launch-jobs-root/fanout-*/.workdirs/*/data.bin").stdout.decode()
        assert found.split()[0] == digest, (host.name, found)
    assert {h.name: listeners(lab, h.name) for h in lab.hosts} == before


def test_a_host_cut_off_mid_transfer_is_named_and_the_others_get_the_image(tmp_path: Path, lab, ballast_base: str,
                                                                          cold_hosts, slow_link) -> None:
    job = fanout_job(tmp_path, lab, ballast_base)
    before = {h.name: listeners(lab, h.name) for h in lab.hosts}
    start, h2_start = bytes_out(lab), bytes_to(lab, "h2")
    proc = start_launcher(job, tmp_path, "--runs-dir", str(tmp_path / "runs"), env={"LAUNCH_RELAY_IDLE_S": "10"})
    try:
        deadline = time.monotonic() + 120
        while bytes_to(lab, "h2") - h2_start < BALLAST // 3:  # h2 has a third of the stream: it is mid-transfer
            assert time.monotonic() < deadline and proc.poll() is None, "the image did not start going out"
            time.sleep(0.1)
        lab.cut_link("h2")
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        lab.restore_link("h2")
    sent = bytes_out(lab) - start
    assert proc.returncode != 0, out
    # h3 was fed again from h1, which had the image by then: not from this machine
    assert re.search(r"^h3: received [\d.]+ MB from h1 \(a chain of hosts\)", out, re.M), out[-3000:]  # h1's save: whole
    assert sent < 1.03 * BALLAST + COUNTING / 2, f"{sent} bytes left this machine: more than one compressed copy"
    errors = [line for line in out.splitlines() if "h2" in line and "could not be sent" in line]
    assert len(errors) == 1 and "lost while receiving the image from h1" in errors[0], out[-3000:]
    assert "h1, h3 got it" in errors[0]
    runs = tmp_path / "runs"
    ids = ids_on_hosts(lab, job_tag(out))
    assert ids["h1"] == ids["h3"] == local_id(job_tag(out)) and ids["h2"] is None, ids  # h2 loaded nothing half-received
    deadline = time.monotonic() + 60  # h2's relay gives up on its own once nothing comes
    while {h.name: listeners(lab, h.name) for h in lab.hosts} != before and time.monotonic() < deadline:
        time.sleep(1)
    assert {h.name: listeners(lab, h.name) for h in lab.hosts} == before
    # the others run the job: an inventory without h2, and nothing to send
    cluster = tmp_path / "two.yaml"
    inventory = lab.cluster_file.read_text()
    two = inventory[:inventory.index("  - name: h2")] + inventory[inventory.index("  - name: h3"):]
    cluster.write_text(two)
    again = launch(str(fanout_job(tmp_path, lab, ballast_base, cluster)), "--runs-dir", str(runs), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert "h1: has the image already" in again.stdout and "h3: has the image already" in again.stdout
