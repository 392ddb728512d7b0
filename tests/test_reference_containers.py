"""The reference job (ResNet-18, jobs/book) in containers on the simulated lab, as a new user runs it:
on the project's CPU base image (torch and torchvision, ~6 GB), on two hosts whose image stores are
empty, so the whole image travels to each of them: once out of this machine, then from the first
host to the second."""

from __future__ import annotations

import json
import re
from pathlib import Path

import docker
import pytest

from conftest import ROOT, launch

# last: the other tests need the lab's base image in the hosts, and this one empties their stores
pytestmark = [pytest.mark.integration, pytest.mark.last]


def wipe(lab) -> None:
    for host in lab.hosts:
        lab.ssh(host.name, "docker ps -aq | xargs -r docker rm -f >/dev/null; docker images -aq | xargs -r docker rmi -f >/dev/null; true",
                timeout=300)


def out_of_this_machine(lab) -> int:
    """Bytes this machine has sent onto the lab's bridge (the hosts' traffic to each other is not counted)."""
    return int(Path(f"/sys/class/net/{lab.bridge}/statistics/tx_bytes").read_text())


@pytest.mark.timeout(1800)
def test_the_reference_job_runs_in_containers_from_empty_host_stores(tmp_path: Path, lab, cpu_base_image: str) -> None:
    book = ROOT / "jobs/book"
    job, cluster = tmp_path / "job.yaml", tmp_path / "cluster.yaml"
    inventory = lab.cluster_file.read_text()
    cluster.write_text(inventory[:inventory.index("  - name: h3")])  # h1 and h2
    job.write_text(
        f"name: reference-in-containers\ncluster: {cluster}\nworkdir: {book}\nnproc_per_node: 1\n"
        "backend: gloo\ncommand: [python, resnet18_cifar10.py, --epochs, '1', --synthetic-size, '768', --eval-size, '192']\n"
        f"env: {{OMP_NUM_THREADS: '1'}}\nimage: {{base: '{cpu_base_image}', requirements: '{book / 'requirements.txt'}'}}\n"
        "runtime: docker\ntimeout: 20m\n"
    )
    wipe(lab)
    try:
        before = out_of_this_machine(lab)
        result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=1500)
        sent = out_of_this_machine(lab) - before
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        # each host's stream holds the whole image (compressed on the way where the link was busy)
        got = {host: float(raw or sent) for host, sent, raw in re.findall(
            r"^(h\d): received ([\d.]+) MB(?: \(compressed from ([\d.]+) MB\))? from (?:this machine|h1) \(a chain of hosts\)",
            result.stdout, re.M)}
        assert set(got) == {"h1", "h2"} and all(mb > 4000 for mb in got.values()), result.stdout[:3000]
        assert re.search(r"held-out loss [\d.]+, accuracy [\d.]+ \(192 samples\)", result.stdout), result.stdout[-3000:]

        run_dir = tmp_path / "runs" / re.search(r"^launch: run (\S+) on", result.stdout, re.M).group(1)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "succeeded" and summary["world_size"] == 2
        plan = json.loads((run_dir / "plan.json").read_text())
        tag = plan["nodes"][0]["image"]
        client = docker.from_env()
        image, base = client.images.get(tag), client.images.get(cpu_base_image)
        assert plan["image_id"] == image.id
        # torch and torchvision come from the base: the job's image adds only the launcher's few files
        assert image.attrs["Size"] - base.attrs["Size"] < 5 * 10**6, (image.attrs["Size"], base.attrs["Size"])
        assert sent < 1.2 * image.attrs["Size"], f"{sent} bytes left this machine for a {image.attrs['Size']}-byte image"
        for host in lab.hosts[:2]:
            has = lab.docker(host.name, "image", "inspect", "--format", "{{.Id}}", tag).stdout.decode().strip()
            assert has == image.id
    finally:
        wipe(lab)  # 6 GB per host; the lab's next bring-up loads its base again
