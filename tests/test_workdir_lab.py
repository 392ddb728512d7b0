"""The job's workdir on the simulated lab: copied to each host apart from the image, only what
changed, read-only and exact for each run; old copies pruned; `--dry-run` says what would be sent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from launcher.image.prune import KEEP

from conftest import ROOT, lab_job, launch, read_until, run_id_of, start_launcher

pytestmark = pytest.mark.integration

SHOW = ROOT / "tests/jobs/show_version.py"
COPIES = "/var/tmp/launch-jobs-root/lab-show_version/.workdirs"


def sent(output: str) -> dict[str, tuple[int, float]]:
    """Per host: files sent and kB on the wire, from the launcher's lines."""
    found = {}
    for host, files, size, unit in re.findall(r"^(h\d): workdir \w+: sent (\d+) file\(s\).*?, ([\d.]+) (kB|MB) in all", output, re.M):
        found[host] = (int(files), float(size) * (1000 if unit == "MB" else 1))
    return found


def recorded_hash(runs: Path, output: str) -> str:
    run_id = re.search(r"^launch: run (\S+) on", output, re.M).group(1)
    plan = json.loads((runs / run_id / "plan.json").read_text())
    record = json.loads((runs / run_id / "workdir.json").read_text())
    assert plan["workdir_hash"] == record["hash"]
    return record["hash"]


def make_job(tmp_path: Path, lab, base_image: str, args: list[str], extra: str = "") -> Path:
    job = lab_job(tmp_path, lab, base_image, SHOW, args, extra)
    work = job.parent
    (work / "version.txt").write_text("v1\n")
    (work / "data.bin").write_bytes(os.urandom(20 * 10**6))  # a data file that must not travel again
    (work / ".launchignore").write_text("notes/\n*.secret\n")
    (work / "notes").mkdir()
    (work / "notes" / "private.txt").write_text("never on a host\n")
    (work / "token.secret").write_text("never on a host\n")
    (work / "__pycache__").mkdir()
    (work / "__pycache__" / "x.pyc").write_bytes(b"ignored by default")
    return job


def test_an_edit_sends_one_file_every_rank_runs_it_and_no_edit_sends_nothing(tmp_path: Path, lab, base_image: str) -> None:
    """One job's workdir through its life: first sent whole, then nothing, an ignored edit nothing, an
    edit one file (what a dry run says first), from a machine without manifests one file, a removal;
    and a dry run names the links that leave it."""
    for host in lab.hosts:  # from hosts that never saw this job's workdir
        lab.ssh(host.name, f"rm -rf {COPIES}")
    job = make_job(tmp_path, lab, base_image, [])
    runs = tmp_path / "runs"

    first = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    full = sent(first.stdout)
    assert set(full) == {"h1", "h2", "h3"} and all(kb >= 20_000 for _, kb in full.values()), first.stdout[-2000:]
    assert len(re.findall(r"rank \d version v1$", first.stdout, re.M)) == 3
    shown = set(re.findall(r"rank \d files (.*)$", first.stdout, re.M))
    assert len(shown) == 1 and "data.bin" in shown.pop()
    for secret in ("private.txt", "token.secret", "x.pyc"):
        assert secret not in first.stdout
        found = lab.ssh("h2", f"find /var/tmp/launch-jobs-root -name {secret}").stdout.decode()
        assert not found.strip(), found

    again = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert sent(again.stdout) == {} and again.stdout.count("has workdir") == 3, again.stdout[-2000:]
    assert recorded_hash(runs, again.stdout) == recorded_hash(runs, first.stdout)

    # an ignored file changes: same workdir, nothing sent
    (job.parent / "notes" / "private.txt").write_text("edited, still ignored\n")
    ignored = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path)
    assert ignored.returncode == 0 and sent(ignored.stdout) == {}, ignored.stdout[-2000:]
    assert recorded_hash(runs, ignored.stdout) == recorded_hash(runs, first.stdout)

    (job.parent / "version.txt").write_text("v2\n")
    dry_run_says_what_would_be_sent_and_sends_nothing(job, lab, runs)
    edited = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path)
    assert edited.returncode == 0, edited.stdout[-3000:] + edited.stderr
    delta = sent(edited.stdout)
    assert set(delta) == {"h1", "h2", "h3"} and all(files == 1 and kb < 50 for files, kb in delta.values()), delta
    assert "(unchanged)" in edited.stdout and edited.stdout.count("has the image already") == 3  # no image built or sent
    assert len(re.findall(r"rank \d version v2$", edited.stdout, re.M)) == 3 and "v1" not in edited.stdout
    assert recorded_hash(runs, edited.stdout) != recorded_hash(runs, first.stdout)

    # from a machine that never launched the job (no manifests cached here): the hosts' own serve
    (job.parent / "version.txt").write_text("v3\n")
    elsewhere = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path, env={"LAUNCH_CACHE": str(tmp_path / "other-cache")})
    assert elsewhere.returncode == 0, elsewhere.stdout[-3000:] + elsewhere.stderr
    assert all(files == 1 for files, _ in sent(elsewhere.stdout).values()) and elsewhere.stdout.count("onto its copy") == 3

    # a file goes: the hosts' new copies lack it
    (job.parent / "data.bin").unlink()
    removed = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path)
    assert removed.returncode == 0, removed.stdout[-3000:] + removed.stderr
    assert "data.bin" not in re.search(r"rank 0 files (.*)$", removed.stdout, re.M).group(1)
    links_and_interfaces_are_said_by_a_dry_run(job, lab, runs)


def dry_run_says_what_would_be_sent_and_sends_nothing(job: Path, lab, runs: Path) -> None:
    """After one edit of a job the hosts have: one file to send, the image there, nothing changed."""
    before = {h.name: lab.ssh(h.name, f"ls {COPIES}").stdout for h in lab.hosts}
    dry = launch(str(job), "--runs-dir", str(runs), "--dry-run", cwd=runs.parent)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr
    for host in ("h1", "h2", "h3"):
        assert re.search(rf"^{host}: image: has it$", dry.stdout, re.M), dry.stdout[-2000:]
        assert re.search(rf"^{host}: workdir \w+ from its copy \w+: send 1 file\(s\), 0.0 kB", dry.stdout, re.M), dry.stdout[-2000:]
    assert "built already on this machine" in dry.stdout
    assert {h.name: lab.ssh(h.name, f"ls {COPIES}").stdout for h in lab.hosts} == before


def links_and_interfaces_are_said_by_a_dry_run(job: Path, lab, runs: Path) -> None:
    """Without `nic` the interfaces are found now, and said; links that leave the workdir are named, not followed."""
    (runs.parent / "no-nic.yaml").write_text(lab.cluster_file.read_text().replace("    nic: eth0\n", ""))
    (job.parent / "dangling").symlink_to("nowhere")
    (job.parent / "shadow").symlink_to("/etc/shadow")
    dry = launch(str(job), "--cluster", str(runs.parent / "no-nic.yaml"), "--runs-dir", str(runs), "--dry-run", cwd=runs.parent)
    assert dry.returncode == 0 and "Traceback" not in dry.stdout + dry.stderr, dry.stdout[-3000:] + dry.stderr
    for host in ("h1", "h2", "h3"):
        assert f"{host}: GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME=eth0 (not in the plan above: found at launch" in dry.stdout
    assert "2 link(s) in the workdir" in dry.stderr and "shadow -> /etc/shadow, outside the workdir" in dry.stderr


GATE = "/tmp/launch-test-go"  # in each container of the first run: it reads version.txt again once this exists
# show_version.py's first two lines, then its "after hold" line once the test opens the gate
HOLD_FOR_THE_GATE = ["sh", "-c", "python show_version.py | sed -n 1,2p; until [ -e $0 ]; do sleep 0.1; done; "
                     'echo "rank $RANK after hold version $(cat version.txt)"', GATE]


def test_an_edit_during_a_run_does_not_reach_that_runs_ranks(tmp_path: Path, lab, base_image: str) -> None:
    job = make_job(tmp_path, lab, base_image, [], extra="rdzv_port: 29610\n")
    plain = job.read_text()
    job.write_text(re.sub(r"^command: .*$", lambda _: f"command: {json.dumps(HOLD_FOR_THE_GATE)}", plain, flags=re.M))
    runs = tmp_path / "runs"
    first = start_launcher(job, tmp_path, "--runs-dir", str(runs))
    try:
        seen = "".join(read_until(first, lambda lines: len(re.findall(r"rank \d version v1$", "".join(lines), re.M)) == 3))
        assert len(re.findall(r"rank \d version v1$", seen, re.M)) == 3, seen[-2000:]
        (job.parent / "version.txt").write_text("v2 during the first run\n")
        job.write_text(plain.replace("rdzv_port: 29610", "rdzv_port: 29620"))
        second = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr
        assert second.stdout.count("after hold version v2 during the first run") == 3
        first_run = run_id_of(seen)
        for host in lab.hosts:  # the second run has ended and synced its edit: the first run's ranks read again
            (box,) = lab.docker(host.name, "ps", "-q", "--filter", f"label=launch.run_id={first_run}").stdout.decode().split()
            lab.docker(host.name, "exec", box, "touch", GATE)
        rest, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    seen += rest
    assert first.returncode == 0, seen[-3000:]
    assert seen.count("after hold version v1") == 3 and "v2" not in seen, seen[-2000:]


def test_old_images_and_workdir_copies_are_pruned_but_not_those_a_run_uses(tmp_path: Path, lab, base_image: str) -> None:
    """Every launch here has a new image (its requirements change) and a new workdir; a detached run
    of the first keeps its image and its copy while the job is edited and launched KEEP + 1 times,
    so that two more than KEEP exist and the oldest unused one must go."""
    job = lab_job(tmp_path, lab, base_image, SHOW, ["--hold", "600"])
    work = job.parent
    repository = "launch/lab-show-version"
    (work / "requirements.txt").write_text("# no requirements\n")
    job.write_text(job.read_text().replace("image: {base: ", "image: {requirements: requirements.txt, base: "))

    def edit_and_launch(*extra: str) -> subprocess.CompletedProcess:
        stamp = time.time()
        (work / "version.txt").write_text(f"{stamp}\n")
        (work / "requirements.txt").write_text(f"# {stamp}\n")
        result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        return result

    def state(host: str) -> tuple[list[str], list[str]]:
        tags = lab.docker(host, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository).stdout.decode().split()
        copies = [n for n in lab.ssh(host, f"ls {COPIES}").stdout.decode().split() if not n.endswith(".json.gz")]
        return tags, copies

    detached = edit_and_launch("--detach")
    in_use = re.search(r"image (launch/lab-show-version:\w+)", detached.stdout).group(1)
    copy_in_use = re.search(r"workdir (\w+):", detached.stdout).group(1)
    job.write_text(job.read_text().replace('"--hold", "600"', '"--hold", "0"') + "rdzv_port: 29630\n")
    try:
        for _ in range(KEEP + 1):
            last = edit_and_launch()
        current = re.search(r"image (launch/lab-show-version:\w+)", last.stdout).group(1)
        current_copy = re.search(r"workdir (\w+):", last.stdout).group(1)
        for host in ("h1", "h2", "h3"):
            tags, copies = state(host)
            assert current in tags and in_use in tags and len(tags) <= KEEP + 1, (host, tags)
            assert current_copy in copies and copy_in_use in copies and len(copies) <= KEEP + 1, (host, copies)
        import docker

        here = [t for image in docker.from_env().images.list(name=repository) for t in image.tags]
        assert current in here and len(here) <= KEEP + 1, here
        assert "removed old images of launch/lab-show-version (keeping the newest 3)" in last.stdout
        assert "removed old workdir copies (keeping the newest 3)" in last.stdout
    finally:
        run_id = re.search(r"^launch: run (\S+) started", detached.stdout, re.M).group(1)
        stopped = launch("stop", run_id, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert stopped.returncode in (0, 1), stopped.stdout + stopped.stderr


def test_a_file_edited_while_being_sent_makes_no_copy(tmp_path: Path, lab, base_image: str) -> None:
    """The copy is named by the hash of the workdir as scanned: content that no longer matches it must
    not land under that name. The launcher's own functions, on the lab's real hosts."""
    from launcher.errors import RunError
    from launcher.backends.deploy import connect_all, provide_workdir
    from launcher.spec import load_cluster
    from launcher.sync.manifest import scan

    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text("print('scanned')\n")
    manifest = scan(work, tmp_path / "cache")
    (work / "train.py").write_text("print('edited after the scan')\n")
    hosts = load_cluster(lab.cluster_file).hosts
    folders = {h.name: f"/var/tmp/launch-test-edits/{h.name}" for h in hosts}
    conns = connect_all(hosts)
    try:
        with pytest.raises(RunError, match=r"the workdir could not be copied to 3 host\(s\): .*train\.py: changed"):
            provide_workdir(work, manifest, folders, conns, lambda line: None)
    finally:
        for conn in conns.values():
            conn.close()
    for host in hosts:
        left = lab.ssh(host.name, f"ls -A {folders[host.name]} 2>/dev/null; true").stdout.decode().split()
        assert left == [], (host.name, left)  # no copy, no half-made folder


def test_a_job_whose_image_another_job_has_is_tagged_on_the_hosts_not_sent(tmp_path: Path, lab, base_image: str) -> None:
    """Images hold no job code, so two jobs with the same base and requirements share one image."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = lab_job(tmp_path / "a", lab, base_image, SHOW, [])
    (first.parent / "version.txt").write_text("a\n")
    twin = lab_job(tmp_path / "b", lab, base_image, SHOW, [])
    (twin.parent / "version.txt").write_text("b\n")
    twin.write_text(twin.read_text().replace("name: lab-show_version", "name: lab-twin"))
    out = launch(str(first), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    for host in lab.hosts:
        lab.ssh(host.name, "docker image ls --format '{{.Repository}}:{{.Tag}}' launch/lab-twin | xargs -r docker image rm >/dev/null; true")
    result = launch(str(twin), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.count("has the image already") == 3 and "layer(s)" not in result.stdout, result.stdout[:2000]
    tag = re.search(r"^image (\S+) \(", result.stdout, re.M).group(1)
    assert tag.startswith("launch/lab-twin:")
    assert lab.docker("h2", "image", "inspect", "--format", "{{.Id}}", tag).returncode == 0
    assert len(re.findall(r"rank \d version b$", result.stdout, re.M)) == 3
