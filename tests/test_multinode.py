"""Multi-node runs on the simulated lab: real sshd, real dockerd per host, images shipped for real."""

from __future__ import annotations

import hashlib
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.plan.layout import RUNS_FOLDER
from conftest import (PROBE, ROOT, assert_secret_nowhere, containers, host_runtime_job, lab_job, launch, read_until, run_id_of, spawn,
                      start_launcher)

pytestmark = pytest.mark.integration


def test_three_hosts_allreduce_with_known_answer(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, ROOT / "jobs/allreduce/train.py", ["--steps", "20"])
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run = tmp_path / "runs" / run_id_of(result.stdout)
    for rank, host in enumerate(("h1", "h2", "h3")):
        assert f"[{host}/{rank}] allreduce: rank {rank} of 3: sum 6 (expected 6) OK" in result.stdout
        log = (run / "logs" / host / f"rank{rank}.log").read_text()
        assert f"allreduce: rank {rank} of 3: sum 6 (expected 6) OK" in log
        assert len((run / "metrics" / f"rank{rank}.jsonl").read_text().splitlines()) == 20
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["nodes"], summary["world_size"]) == ("succeeded", 3, 3)
    assert [(r["rank"], r["host"], r["exit_code"]) for r in summary["ranks"]] == [(0, "h1", 0), (1, "h2", 0), (2, "h3", 0)]
    plan = json.loads((run / "plan.json").read_text())
    assert [n["node_rank"] for n in plan["nodes"]] == [0, 1, 2]
    assert all(f"--master-addr={lab.hosts[0].address}" in n["command"] for n in plan["nodes"])
    assert {"connect", "build", "ship", "workdir", "start", "run", "collect"} <= set(summary["phases_s"])
    assert containers(lab) == {"h1": [], "h2": [], "h3": []}
    assert all(lab.ssh(h.name, f"test -e /tmp/launch-runs-root/{summary['run_id']}", check=False).returncode == 1 for h in lab.hosts)


def test_a_failing_rank_stops_every_host(tmp_path: Path, lab, base_image: str) -> None:
    """Rank 2 fails at step 5 while the others wait for it in that step's all-reduce (they would wait
    until the run's timeout): the launcher stops them."""
    job = lab_job(tmp_path, lab, base_image, ROOT / "tests/jobs/lockstep.py", ["--steps", "50", "--fail-rank", "2", "--fail-step", "5", "--fail-code", "9"])
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    run = tmp_path / "runs" / run_id_of(result.stdout)
    summary = json.loads((run / "summary.json").read_text())
    assert "timed out" not in summary.get("reason", ""), summary.get("reason")
    failure = summary["failure"]
    assert (failure["host"], failure["rank"], failure["exit_code"]) == ("h3", 2, 9)
    assert failure["last_lines"][-1] == "rank 2 failing on purpose at step 5"
    assert "first failure: rank 2 on h3, exit code 9" in result.stdout
    for rank, host in enumerate(("h1", "h2")):
        assert "step 4" in (run / "logs" / host / f"rank{rank}.log").read_text(), "logs of stopped ranks are collected"
    assert containers(lab) == {"h1": [], "h2": [], "h3": []}


def test_arguments_and_secrets_arrive_intact_and_ctrl_c_leaves_no_container_on_any_host(tmp_path: Path, lab, base_image: str) -> None:
    """One run: its arguments and secret cross SSH and docker intact (the secret on no command line, in
    no container's settings, no file), `logs` follows it while it goes on, and Ctrl-C ends it everywhere."""
    marker = "/tmp/launch-quoting-marker"
    tricky = [f"$(touch {marker})", '"quoted"', "'a b'", "a b\"c", "`touch /tmp/x2`"]
    secret = "inspect-me-not-7d2a"
    job = lab_job(tmp_path, lab, base_image, PROBE, ["--steps", "6000", "--sleep", "0.1", "--print-args", "--hash-env", "API_TOKEN", *tricky],
                  extra="secrets: [API_TOKEN]\n")
    proc = start_launcher(job, tmp_path, "--runs-dir", str(tmp_path / "runs"), env={"API_TOKEN": secret})
    seen = read_until(proc, lambda lines: sum("] step 3" in line for line in lines) == 3)
    assert all(containers(lab).values()), "every host runs the job's container"
    run = tmp_path / "runs" / run_id_of("".join(seen))
    follow = launch("logs", str(run), "--rank", "2", cwd=tmp_path)  # while the run goes on
    assert "[h3/2] step 3" in follow.stdout.splitlines(), follow.stdout[-500:] + follow.stderr
    for host, ids in containers(lab).items():
        inspected = lab.ssh(host, f"docker inspect {' '.join(ids)}").stdout.decode()
        assert secret not in inspected and "API_TOKEN=" not in inspected  # nor in the container's environment
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-4000:]
    assert containers(lab) == {"h1": [], "h2": [], "h3": []}
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert "step 3" in (run / "logs/h2/rank1.log").read_text()
    for rank, host in enumerate(("h1", "h2", "h3")):
        line = next(l for l in output.splitlines() if l.startswith(f"[{host}/{rank}] args: "))
        assert json.loads(line.split("args: ", 1)[1])[-len(tricky):] == tricky
        assert lab.ssh(host, f"test -e {marker}", check=False).returncode == 1
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert output.count(f"env API_TOKEN sha256 {digest}") == 3
    assert_secret_nowhere(secret, output, tmp_path / "runs")


def rank_processes(lab, run_id: str) -> dict[str, str]:
    return {h.name: lab.ssh(h.name, f"grep -l LAUNCH_RUN_ID={run_id} /proc/[0-9]*/environ 2>/dev/null || true").stdout.decode().strip()
            for h in lab.hosts}


def test_runtime_host_runs_on_three_hosts_without_containers(tmp_path: Path, lab) -> None:
    job = host_runtime_job(tmp_path, lab, ROOT / "jobs/allreduce/train.py", ["--steps", "10"])
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run_id = run_id_of(result.stdout)
    for rank, host in enumerate(("h1", "h2", "h3")):
        log = (tmp_path / "runs" / run_id / "logs" / host / f"rank{rank}.log").read_text()
        assert f"allreduce: rank {rank} of 3: sum 6 (expected 6) OK" in log
    assert "building" not in result.stdout and containers(lab) == {"h1": [], "h2": [], "h3": []}
    plan = json.loads((tmp_path / "runs" / run_id / "plan.json").read_text())
    assert [n["env"]["GLOO_SOCKET_IFNAME"] for n in plan["nodes"]] == ["eth0"] * 3
    assert rank_processes(lab, run_id) == {"h1": "", "h2": "", "h3": ""}


def test_runtime_host_failure_stops_every_hosts_processes(tmp_path: Path, lab) -> None:
    job = host_runtime_job(tmp_path, lab, PROBE, ["--steps", "600", "--sleep", "0.1", "--fail-rank", "0", "--fail-step", "5"])
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    run_id = run_id_of(result.stdout)
    failure = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())["failure"]
    assert (failure["host"], failure["rank"], failure["exit_code"]) == ("h1", 0, 3)
    assert rank_processes(lab, run_id) == {"h1": "", "h2": "", "h3": ""}


def test_an_unknown_host_key_is_refused_and_nothing_starts(tmp_path: Path, lab, base_image: str) -> None:
    (tmp_path / "empty_known_hosts").write_text("")
    cluster = lab.cluster_file.read_text().replace(str(lab.known_hosts), str(tmp_path / "empty_known_hosts"))
    (tmp_path / "cluster.yaml").write_text(cluster)
    job = lab_job(tmp_path, lab, base_image, PROBE, ["--steps", "1"])
    result = launch(str(job), "--cluster", str(tmp_path / "cluster.yaml"), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 1
    h1 = lab.hosts[0].address
    assert f"h1 (root@{h1}:22): the host key of {h1} is not in {tmp_path / 'empty_known_hosts'}" in result.stderr
    assert (tmp_path / "empty_known_hosts").read_text() == "", "strict never records a key"
    assert not (tmp_path / "runs").exists()


def test_a_host_that_is_down_is_named_and_nothing_starts(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, PROBE, ["--steps", "1"])
    lab.cut_link("h2")
    try:
        result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=120)
    finally:
        lab.restore_link("h2")
    assert result.returncode == 1
    assert result.stderr.startswith(f"launch: error: h2 (root@{lab.hosts[1].address}:22): cannot connect")
    assert not (tmp_path / "runs").exists()
    assert containers(lab) == {"h1": [], "h2": [], "h3": []}


def test_accept_new_records_unknown_keys_but_refuses_a_changed_one(tmp_path: Path, lab, base_image: str) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    cluster = lab.cluster_file.read_text().replace(str(lab.known_hosts), str(known)).replace("strict", "accept-new")
    (tmp_path / "cluster.yaml").write_text(cluster)
    job = lab_job(tmp_path, lab, base_image, PROBE, ["--steps", "1"])
    result = launch(str(job), "--cluster", str(tmp_path / "cluster.yaml"), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert sorted(line.split()[0] for line in known.read_text().splitlines()) == [h.address for h in lab.hosts]
    # h1's entry now holds h2's key: a changed key is refused, whatever the policy
    keys = {line.split()[0]: line.split(None, 1)[1] for line in lab.known_hosts.read_text().splitlines()}
    h1, h2 = lab.hosts[0].address, lab.hosts[1].address
    known.write_text(f"{h1} {keys[h2]}\n")
    result = launch(str(job), "--cluster", str(tmp_path / "cluster.yaml"), "--runs-dir", str(tmp_path / "runs2"), cwd=tmp_path)
    assert result.returncode == 1
    assert f"h1 (root@{h1}:22): the host key of {h1} does not match {known}; refusing to connect" in result.stderr
    assert not (tmp_path / "runs2").exists()


# a file where a folder of h3's part of the run goes: the folder its secrets are written to first, or
# the run's own folder, which the node's one start command makes
@pytest.mark.parametrize("blocked", ["/tmp/launch-runs-root", f"/var/tmp/launch-jobs-root/lab-probe/{RUNS_FOLDER}"])
def test_a_node_that_cannot_start_fails_the_run_and_the_others_are_cleaned_up(tmp_path: Path, lab, base_image: str,
                                                                               blocked: str) -> None:
    job = lab_job(tmp_path, lab, base_image, PROBE, ["--steps", "600", "--sleep", "0.1"], extra="secrets: [API_TOKEN]\n")
    aside = shlex.quote(blocked + ".aside")
    lab.ssh("h3", f"mkdir -p {shlex.quote(blocked.rsplit('/', 1)[0])} && "
                  f"{{ [ ! -e {shlex.quote(blocked)} ] || mv {shlex.quote(blocked)} {aside}; }} && touch {shlex.quote(blocked)}")
    try:
        result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, env={"API_TOKEN": "x-9"})
    finally:
        lab.ssh("h3", f"rm -f {shlex.quote(blocked)}; [ ! -e {aside} ] || mv {aside} {shlex.quote(blocked)}")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("could not start node h3: h3: cannot make"), summary
    assert "Not a directory" in summary["reason"] or "File exists" in summary["reason"], summary["reason"]
    assert containers(lab) == {"h1": [], "h2": [], "h3": []}
    for host in ("h1", "h2", "h3"):  # every node stopped, and its files (the secrets too) removed
        assert lab.ssh(host, f"test -e /tmp/launch-runs-root/{summary['run_id']}", check=False).returncode == 1


def test_check_says_which_hosts_are_usable_and_why_not(tmp_path: Path, lab) -> None:
    good = launch("check", str(lab.cluster_file), cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert lines[-1] == "3 of 3 host(s) usable"
    assert all(line.split()[:3] == [h.name, h.address, "ok"] and "docker 20.10" in line for h, line in zip(lab.hosts, lines))

    (tmp_path / "cluster.yaml").write_text(lab.cluster_file.read_text().replace("gpus: 0", "gpus: 2", 1))
    listeners = {}
    for host, port in (("h1", 29500), ("h1", 29501), ("h2", 29500)):  # the rendezvous port, the node supervisors'; h2's: no run needs it
        # SO_REUSEADDR and retries: the previous test's nodes may still be letting go of the port
        lab.ssh(host, "cat > /tmp/listen.py <<'EOF'\n"
                      "import socket, sys, time\n"
                      "s = socket.socket()\n"
                      "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                      "for _ in range(300):\n"
                      "    try:\n"
                      "        s.bind(('0.0.0.0', int(sys.argv[1])))\n"
                      "        break\n"
                      "    except OSError:\n"
                      "        time.sleep(0.1)\n"
                      "s.listen()\n"
                      "time.sleep(120)\n"
                      "EOF")
        listeners[(host, port)] = lab.ssh(host, f"nohup python3 /tmp/listen.py {port} >/dev/null 2>&1 & echo $!").stdout.decode().strip()
        deadline = time.monotonic() + 40
        while str(port) not in lab.ssh(host, f"ss -ltnH 'sport = :{port}'").stdout.decode():
            assert time.monotonic() < deadline, f"no listener on {host}:{port}"
            time.sleep(0.2)
    lab.cut_link("h3")
    try:
        bad = launch("check", str(tmp_path / "cluster.yaml"), cwd=tmp_path, timeout=120)
    finally:
        lab.restore_link("h3")
        for (host, _), pid in listeners.items():
            lab.ssh(host, f"kill {pid}", check=False)
    assert bad.returncode == 1
    by_host = {line.split()[0]: line for line in bad.stdout.splitlines()[:3]}
    assert "NOT USABLE: 0 GPU(s) visible, the inventory says 2" in by_host["h1"]
    assert "port 29500 is in use (the rendezvous port)" in by_host["h1"]
    assert "port 29501 is in use (the node supervisors' port, rendezvous + 1, needed for multi-node runs)" in by_host["h1"]
    assert " ok " in by_host["h2"] and "29500" not in by_host["h2"], "only the first host's ports matter to a run"
    assert f"NOT USABLE: h3 (root@{lab.hosts[2].address}:22): cannot connect" in by_host["h3"]
    assert bad.stdout.splitlines()[-1] == "1 of 3 host(s) usable"


def test_ctrl_c_during_a_remote_command_reaches_the_launcher(tmp_path: Path, lab) -> None:
    """Every step before a run (connect, check the image, ship it) runs remote commands: Ctrl-C must
    end the launcher there too, not be handed to the remote command and lost."""
    script = tmp_path / "remote_sleep.py"
    started = "/tmp/launch-test-remote-sleep"  # on h1, made by the remote command as it starts
    lab.ssh("h1", f"rm -f {started}")
    script.write_text(
        "import sys\nfrom pathlib import Path\nfrom launcher.spec import load_cluster\n"
        "from launcher.hosts.ssh import connect, run\n"
        f"conn = connect(load_cluster(Path({str(lab.cluster_file)!r})).hosts[0])\n"
        "try:\n"
        f"    run(conn, ['sh', '-c', 'touch {started}; exec sleep 60'])\n"
        "except KeyboardInterrupt:\n    print('interrupted', flush=True)\n    sys.exit(130)\n"
    )
    proc = spawn([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while lab.ssh("h1", f"test -e {started}", check=False).returncode != 0:  # the remote command runs
        assert time.monotonic() < deadline and proc.poll() is None, "the remote command never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)  # the remote command would hold it for 60 s
    assert (proc.returncode, out.strip()) == (130, "interrupted")


def test_a_taken_rendezvous_port_on_rank_0s_host_is_named_before_anything_starts(tmp_path: Path, lab, base_image: str) -> None:
    lab.ssh("h1", "cat > /tmp/hold.py <<'EOF'\n"
                  "import socket, time\n"
                  "s = socket.socket()\n"
                  "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                  "s.bind(('0.0.0.0', 29571))\n"
                  "s.listen()\n"
                  "time.sleep(120)\n"
                  "EOF")
    pid = lab.ssh("h1", "nohup python3 /tmp/hold.py >/dev/null 2>&1 & echo $!").stdout.decode().strip()
    try:
        deadline = time.monotonic() + 30
        while "29571" not in lab.ssh("h1", "ss -ltnH 'sport = :29571'").stdout.decode():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        job = lab_job(tmp_path, lab, base_image, PROBE, ["--steps", "2"], extra="rdzv_port: 29571\n")
        result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    finally:
        lab.ssh("h1", f"kill {pid}", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"port 29571 on h1 (rank 0's host) (the rendezvous port) is in use by pid {pid} (python3)" in result.stderr
    assert containers(lab) == {"h1": [], "h2": [], "h3": []}


def test_check_says_a_host_whose_docker_daemon_is_down_is_not_usable(tmp_path: Path, lab) -> None:
    lab.ssh("h3", "kill $(cat /var/run/docker.pid)")
    try:
        deadline = time.monotonic() + 30
        while lab.docker("h3", "version", check=False).returncode == 0:
            assert time.monotonic() < deadline, "h3's dockerd did not stop"
            time.sleep(0.2)
        result = launch("check", str(lab.cluster_file), cwd=tmp_path, timeout=120)
    finally:
        lab.start_services(lab.host("h3"))
    assert result.returncode == 1, result.stdout
    by_host = {line.split()[0]: line for line in result.stdout.splitlines()[:3]}
    assert "NOT USABLE: docker does not answer" in by_host["h3"] and "docker missing" in by_host["h3"]
    assert " ok " in by_host["h1"] and result.stdout.splitlines()[-1] == "2 of 3 host(s) usable"


def test_check_of_a_job_checks_what_that_job_needs(tmp_path: Path, lab, base_image: str) -> None:
    job = host_runtime_job(tmp_path, lab, PROBE, ["--steps", "1"])
    result = launch("check", str(job), cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "3 of 3 host(s) usable" and result.stdout.count(" torch 2.") == 3
    (tmp_path / "other").mkdir()
    missing = lab_job(tmp_path / "other", lab, "launch-no-such-base:1", PROBE, ["--steps", "1"])
    bad = launch("check", str(missing), cwd=tmp_path, timeout=180)
    assert bad.returncode == 1
    assert "job: NOT READY: image.base launch-no-such-base:1 is not on this machine" in bad.stdout
    assert bad.stdout.splitlines()[-1] == "3 of 3 host(s) usable; the job is not ready"
