"""One-box runs end to end: real torchrun, real processes, the run directory they leave."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_secret_nowhere, launch, read_until, run_id_of, spawn, start_launcher
from simlab import processes_of_run

pytestmark = pytest.mark.integration


def test_allreduce_job_succeeds_and_fills_the_run_directory(tmp_path: Path) -> None:
    result = launch(str(ROOT / "jobs/allreduce/job.yaml"), "--runs-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / run_id_of(result.stdout)
    for rank in (0, 1):
        assert f"[local/{rank}] allreduce: rank {rank} of 2: sum 3 (expected 3) OK" in result.stdout
        log = (run / "logs/local" / f"rank{rank}.log").read_text()
        assert f"allreduce: rank {rank} of 2: sum 3 (expected 3) OK" in log
        assert not log.startswith("[local"), "the log file holds the rank's own lines, unprefixed"
        records = [json.loads(line) for line in (run / "metrics" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(20))
    assert (run / "job.yaml").read_text() == (ROOT / "jobs/allreduce/job.yaml").read_text()
    assert (run / "cluster.yaml").read_text() == (ROOT / "cluster.yaml").read_text()
    plan = json.loads((run / "plan.json").read_text())
    assert plan["nodes"][0]["host"] == "local" and plan["nodes"][0]["node_rank"] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["exit_code"] == 0
    assert summary["world_size"] == 2 and summary["nodes"] == 1 and summary["backend"] == "gloo"
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    assert all(r["exit_code"] == 0 and r["samples_per_s"] > 0 and r["step_time_median_s"] > 0 for r in summary["ranks"])
    assert summary["throughput_samples_per_s"] == pytest.approx(sum(r["samples_per_s"] for r in summary["ranks"]), rel=1e-3)
    assert "throughput" in result.stdout and "samples/s" in result.stdout
    assert list(summary["phases_s"])[:2] == ["start", "run"] and summary["phases_s"]["run"] > 0
    assert re.search(r"^time: start [\d.]+ s, run [\d.]+ s, .*collect [\d.]+ s \([\d.]+ s in all\)$", result.stdout, re.M)


def test_stdout_and_stderr_of_every_rank_reach_its_log_the_terminal_and_launch_logs(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "2"], nproc=3)
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "runs" / run_id_of(result.stdout)
    for rank in range(3):
        assert f"[box/{rank}] to stderr from rank {rank}" in result.stdout
        log = (run / "logs/box" / f"rank{rank}.log").read_text()
        assert log.splitlines() == [f"to stderr from rank {rank}", "step 0", "step 1"]
    logs = launch("logs", str(run), "--rank", "1", cwd=tmp_path)  # `launch logs` prints them again
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["[box/1] to stderr from rank 1", "[box/1] step 0", "[box/1] step 1"]


def test_a_failing_rank_stops_the_run_and_is_named(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "6000", "--sleep", "0.1", "--fail-rank", "1", "--fail-step", "3", "--fail-code", "7"])
    # the other rank must be stopped, not run its 10 minutes
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == 1
    failure = summary["failure"]
    assert (failure["host"], failure["rank"], failure["exit_code"]) == ("box", 1, 7)
    assert failure["last_lines"][-1] == "rank 1 failing on purpose"
    assert failure["log"].endswith("logs/box/rank1.log")
    assert "first failure: rank 1 on box, exit code 7" in result.stdout
    assert "rank 1 failing on purpose" in result.stdout
    assert processes_of_run(run_id) == []
    # the console shows the ranks and the launcher; torchrun's own lines go to its log (--verbose shows them)
    assert [line for line in result.stdout.splitlines() if line.startswith("[box] ")] == []
    assert "torch.distributed.elastic" not in result.stdout.split("first failure:")[0]
    assert "torch.distributed" in (tmp_path / "runs" / run_id / "logs/box/torchrun.log").read_text()


def test_the_tests_start_launchers_that_take_signals_however_the_tests_were_started(tmp_path: Path) -> None:
    """A test run started as a background job (SIGINT ignored) or under nohup (SIGHUP ignored, SIGTERM
    blocked) still starts every launcher as a terminal would: the signal tests mean the same."""
    show = ("import signal as s; said = {s.SIG_IGN: 'ignored', s.SIG_DFL: 'default'}; "
            "print(*(said.get(s.getsignal(x), 'handled') for x in (s.SIGINT, s.SIGHUP)), *map(int, s.pthread_sigmask(s.SIG_BLOCK, [])))")
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGHUP)}
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        inherited = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True).stdout.split()
        stated = spawn([sys.executable, "-c", show], stdout=subprocess.PIPE, text=True).communicate(timeout=60)[0].split()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert inherited == ["ignored", "ignored", str(int(signal.SIGTERM))], inherited  # what a plain Popen hands on
    assert stated == ["handled", "default"], stated  # Python's KeyboardInterrupt for SIGINT, nothing blocked


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_ctrl_c_stops_every_process_of_the_run(probe_job, tmp_path: Path, sig: signal.Signals) -> None:
    job = probe_job(["--steps", "600", "--sleep", "0.1"])
    proc = start_launcher(job, tmp_path, "--runs-dir", str(tmp_path / "runs"))
    lines = read_until(proc, lambda seen: sum("] step 2" in line for line in seen) == 2)  # both ranks are stepping
    run_id = run_id_of("".join(lines))
    assert len(processes_of_run(run_id)) >= 5  # torchrun, and a wrapper and a probe per rank
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    deadline = time.monotonic() + 30
    while processes_of_run(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_of_run(run_id) == []
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["exit_code"] == 130
    assert summary["reason"] == f"{sig.name} received; stopped every node"
    log = (tmp_path / "runs" / run_id / "logs/box/rank0.log").read_text()
    assert "step 2" in log


def test_arguments_reach_the_job_verbatim_and_secrets_reach_ranks_but_no_file_or_output(probe_job, tmp_path: Path) -> None:
    marker = tmp_path / "created"
    tricky = [f"$(touch {marker})", '"quoted"', "'a b'", "a b\"c", "`id`", "; rm -rf /nonexistent"]
    secret = "s3cr3t-value-93f1"
    job = probe_job(["--hash-env", "API_TOKEN", "--print-args", *tricky], nproc=2, extra="secrets: [API_TOKEN]\n")
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, env={"API_TOKEN": secret})
    assert result.returncode == 0, result.stdout + result.stderr
    printed = [line for line in result.stdout.splitlines() if line.startswith("[box/0] args: ")]
    assert json.loads(printed[0][len("[box/0] args: "):]) == ["--hash-env", "API_TOKEN", "--print-args", *tricky]
    assert not marker.exists()
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert result.stdout.count(f"env API_TOKEN sha256 {digest}") == 2
    assert_secret_nowhere(secret, result.stdout + result.stderr, tmp_path / "runs")
    plan = json.loads(next((tmp_path / "runs").glob("*/plan.json")).read_text())
    assert plan["nodes"][0]["env"]["API_TOKEN"] == "***"


def test_missing_secret_is_bad_input_and_starts_nothing(probe_job, tmp_path: Path) -> None:
    job = probe_job([], extra="secrets: [NOT_SET_ANYWHERE_42]\n")
    env = {k: v for k, v in os.environ.items() if k != "NOT_SET_ANYWHERE_42"}
    result = subprocess.run([sys.executable, "-m", "launcher", str(job), "--runs-dir", str(tmp_path / "runs")],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"launch: error: {job}: secrets: NOT_SET_ANYWHERE_42 is not set in the launcher's environment"
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_plan_and_changes_nothing(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "1"], nproc=2, extra="secrets: [API_TOKEN]\nenv: {FOO: bar}\n")
    result = launch(str(job), "--dry-run", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, env={"API_TOKEN": "xyz-secret"})
    assert result.returncode == 0, result.stderr
    assert "node 0: box (this machine), 2 process(es)" in result.stdout
    assert "--nproc-per-node=2" in result.stdout and "probe.py --steps 1" in result.stdout
    assert "API_TOKEN='***'" in result.stdout and "FOO=bar" in result.stdout
    assert "xyz-secret" not in result.stdout
    assert not (tmp_path / "runs").exists()


def test_a_timeout_stops_the_run(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "600", "--sleep", "0.1"], extra="timeout: 4s\n")
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    run_id = run_id_of(result.stdout)
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("timed out after 4 s")
    assert processes_of_run(run_id) == []


def test_a_job_without_metrics_says_so(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--no-metrics"])
    result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["throughput_samples_per_s"] is None and summary["metrics_missing"] == [0, 1]
    assert all(r["wall_time_s"] > 0 for r in summary["ranks"])
    assert "no metrics from rank(s) 0, 1" in result.stdout


def test_control_characters_from_a_rank_do_not_reach_the_terminal_raw(tmp_path: Path) -> None:
    (tmp_path / "noisy.py").write_text(
        "import sys\n"
        "sys.stdout.buffer.write(b'title \\x1b]0;pwned\\x07 clear \\x1b[2J nul \\x00 end\\n')\n"
        "sys.stdout.buffer.write(b'bar 10%\\r bar 100%\\n')\n"
    )
    (tmp_path / "job.yaml").write_text("name: noisy\nnproc_per_node: 1\nruntime: host\ncommand: [python, noisy.py]\n")
    result = launch(str(tmp_path / "job.yaml"), "--local", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for forbidden in ("\x1b", "\x07", "\x00"):
        assert forbidden not in result.stdout + result.stderr
    assert "[local/0] title ^[]0;pwned^G clear ^[[2J nul ^@ end" in result.stdout
    assert "[local/0]  bar 100%" in result.stdout and "bar 10%" not in result.stdout
    run = tmp_path / "runs" / run_id_of(result.stdout)
    assert b"title \x1b]0;pwned\x07 clear \x1b[2J nul \x00 end\n" in (run / "logs/local/rank0.log").read_bytes()
    logs = launch("logs", str(run), cwd=tmp_path)
    assert logs.returncode == 0 and "[local/0] title ^[]0;pwned^G" in logs.stdout and "\x1b" not in logs.stdout
    no_such_rank = launch("logs", str(run), "--rank", "99", "--follow", cwd=tmp_path, timeout=30)
    assert no_such_rank.returncode == 2
    assert no_such_rank.stderr == f"launch: error: --rank: 99 is not a rank of run {run.name}; its ranks are 0 to 0\n"


@pytest.mark.parametrize("how", ["ctrl-c", "timeout"])
def test_ranks_that_ignore_sigterm_are_killed_and_named(tmp_path: Path, how: str) -> None:
    shutil.copy(ROOT / "tests/jobs/stubborn.py", tmp_path / "stubborn.py")
    # the timeout counts from the launch: room for a busy machine to start both ranks before it
    timeout = "timeout: 20s\n" if how == "timeout" else ""
    (tmp_path / "job.yaml").write_text(f"name: stubborn\nnproc_per_node: 2\nruntime: host\ncommand: [python, stubborn.py]\n{timeout}")
    proc = start_launcher(tmp_path / "job.yaml", tmp_path, "--local", "--runs-dir", str(tmp_path / "runs"))
    lines = read_until(proc, lambda seen: sum("stubborn rank" in line for line in seen) == 2)
    assert sum("stubborn rank" in line for line in lines) == 2, "".join(lines)[-2000:]  # both ignore SIGTERM from now on
    run_id = run_id_of("".join(lines))
    if how == "ctrl-c":
        proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=90)
    output = "".join(lines) + rest
    assert proc.returncode == (130 if how == "ctrl-c" else 1), output
    assert processes_of_run(run_id) == [], "a rank that ignores SIGTERM must still end with the run"
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    killed = summary["killed"]["local"]
    assert {p["rank"] for p in killed if "stubborn.py" in p["command"]} == {0, 1}
    assert "had to be killed on local" in output and "rank 0: python stubborn.py" in output


def test_a_taken_rendezvous_port_is_named_before_anything_starts(probe_job, tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        job = probe_job(["--steps", "2"], extra=f"rdzv_port: {port}\n")
        result = launch(str(job), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"launch: error: port {port} on this machine (the rendezvous port) is in use by pid {os.getpid()} (" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_two_one_box_runs_at_once_each_get_a_free_port(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "30", "--sleep", "0.1"])
    runs = [start_launcher(job, tmp_path, "--runs-dir", str(tmp_path / f"runs{i}")) for i in range(2)]
    outputs = [proc.communicate(timeout=180)[0] for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0], outputs
    ports = {json.loads(next((tmp_path / f"runs{i}").glob("*/plan.json")).read_text())["master_port"] for i in range(2)}
    assert len(ports) == 2 and 29500 not in ports


def test_a_lab_rank_that_only_writes_metrics_is_not_called_quiet(tmp_path: Path) -> None:
    """On a lab run the metrics files stay on the hosts: the nodes' progress events are the sign of life."""
    import io

    from launcher.record.rundir import RunPaths
    from launcher.run.console import Console
    from launcher.run.events import RunView
    from launcher.run.quiet import QuietWatch

    out = io.BytesIO()
    console = Console(out)
    view = RunView(0)
    watch = QuietWatch(2.0, view, RunPaths(tmp_path / "run"), console)
    view.last_rank_line -= 5.0  # nothing printed for 5 s
    view.on_event("a", {"event": "progress", "ranks": {"0": {"step": 3, "samples_per_s": 10.0, "step_s": 0.1}}})
    watch.tick()
    assert b"no rank has printed" not in out.getvalue()
    view.last_rank_line -= 5.0
    watch.checked = 0.0
    watch.tick()
    assert b"launch: warning: no rank has printed a line or written a metric for 5 s" in out.getvalue()


def test_a_run_whose_ranks_fall_silent_is_said_to_be_quiet(tmp_path: Path) -> None:
    (tmp_path / "hang.py").write_text("import time\nprint('before the hang', flush=True)\ntime.sleep(7)\nprint('after', flush=True)\n")
    (tmp_path / "job.yaml").write_text("name: quiet\nnproc_per_node: 1\nruntime: host\ncommand: [python, hang.py]\nhang_warning: 3s\n")
    result = launch(str(tmp_path / "job.yaml"), "--local", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("launch: warning: no rank has printed")]
    # once per 3 s of silence, not on every poll: within one silence each warning in a later 3 s span than the one
    # before (a busy machine's late poll says "4 s" rather than "3 s"; its slow exit after the last line is a new silence)
    silences = [int(re.search(r"for (\d+) s;", w).group(1)) for w in warnings]
    assert silences and min(silences) >= 3, result.stdout
    assert all(b < a or a // 3 < b // 3 for a, b in zip(silences, silences[1:])), silences
    from launcher.spec import load_job

    (tmp_path / "job.yaml").write_text("name: quiet\nnproc_per_node: 1\nruntime: host\ncommand: [python, hang.py]\nhang_warning: false\n")
    assert load_job(tmp_path / "job.yaml").hang_warning_s is None


def test_local_takes_a_job_of_several_nodes_with_the_same_world_size(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "2"], nproc=1, extra="nodes: 3\n")
    result = launch(str(job), "--local", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "launch: --local: the job's 3 nodes x 1 process(es) run as 3 processes on this machine" in result.stderr
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["world_size"] == 3 and summary["nodes"] == 1


def test_verbose_shows_torchruns_own_lines_too(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "50", "--sleep", "0.05", "--fail-rank", "1", "--fail-step", "2", "--fail-code", "3"])
    loud = launch(str(job), "--verbose", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert loud.returncode == 1 and any(line.startswith("[box] ") for line in loud.stdout.splitlines()), loud.stdout[-3000:]
    assert "first failure: rank 1 on box, exit code 3" in loud.stdout


def python_without_torch() -> str:
    """The system's python3, which has no torch (the launcher's own venv has it)."""
    bare = shutil.which("python3", path="/usr/bin")
    if not bare or subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("needs a system python3 without torch in /usr/bin")
    return bare


def test_a_python_without_torch_is_the_named_root_cause_and_logs_show_it(tmp_path: Path) -> None:
    bare = python_without_torch()
    (tmp_path / "cluster.yaml").write_text(f"hosts:\n  - {{name: box, address: local, python: {bare}}}\n")
    (tmp_path / "job.yaml").write_text("name: bare\nruntime: host\nnproc_per_node: 1\ncommand: [python, -c, 'print(1)']\n")
    result = launch(str(tmp_path / "job.yaml"), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 1
    assert "first failure: node box, exit code 1" in result.stdout and "No module named 'torch'" in result.stdout
    logs = launch("logs", run_id_of(result.stdout), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert logs.returncode == 0 and "No module named 'torch'" in logs.stdout
    assert "torchrun's own output follows" in logs.stderr


def test_a_terminal_gets_a_live_status_line(tmp_path: Path) -> None:
    import pty

    (tmp_path / "steps.py").write_text(
        "import time\n"
        "from launcher.node.metrics import MetricsWriter\n"
        "m = MetricsWriter()\n"
        "for step in range(60):\n"
        "    time.sleep(0.1)\n"
        "    m.log(samples=32, step_time_s=0.1, total_steps=60)\n"
        "print('finished', flush=True)\n"
    )
    (tmp_path / "job.yaml").write_text("name: live\nnproc_per_node: 2\nruntime: host\ncommand: [python, steps.py]\n")
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "launcher", str(tmp_path / "job.yaml"), "--local", "--runs-dir", str(tmp_path / "runs")],
                            cwd=tmp_path, stdout=sub, stderr=sub, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(main)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, shown[-3000:]
    statuses = re.findall(r"\r\x1b\[K(elapsed [^\r\n]*)", shown)
    with_steps = [s for s in statuses if "samples/s over 2 rank(s)" in s]
    assert with_steps, shown[-3000:]
    assert re.search(r"step \d+/60 \| [\d,.]+ samples/s over 2 rank\(s\) \| slowest rank \d: 0\.100 s/step \| ETA \d+s", with_steps[-1])


def test_check_of_a_job_finds_a_python_without_torch(tmp_path: Path) -> None:
    bare = python_without_torch()
    (tmp_path / "cluster.yaml").write_text(f"hosts:\n  - {{name: box, address: local, python: {bare}}}\n")
    (tmp_path / "job.yaml").write_text("name: bare\nruntime: host\nnproc_per_node: 1\ncommand: [python, -c, 'print(1)']\n")
    result = launch("check", str(tmp_path / "job.yaml"), cwd=tmp_path)
    assert result.returncode == 1
    assert f"NOT USABLE: {bare} there cannot import torch" in result.stdout and "torch missing" in result.stdout
    (tmp_path / "cluster.yaml").write_text("hosts:\n  - {name: box, address: local}\n")
    good = launch("check", str(tmp_path / "job.yaml"), cwd=tmp_path)
    assert good.returncode == 0 and re.search(r"box +this machine +ok .*torch \d", good.stdout), good.stdout
    with socket.socket() as held:  # the default port busy: a one-box run picks a free pair, so no problem
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        try:
            default = socket.create_server(("0.0.0.0", 29500))
        except OSError:  # already in use, as wanted
            default = None
        try:
            assert launch("check", str(tmp_path / "job.yaml"), cwd=tmp_path).returncode == 0
        finally:
            if default:
                default.close()
        with (tmp_path / "job.yaml").open("a") as fh:
            fh.write(f"rdzv_port: {port}\n")
        fixed = launch("check", str(tmp_path / "job.yaml"), cwd=tmp_path)
        assert fixed.returncode == 1 and f"port {port} is in use" in fixed.stdout, fixed.stdout


def test_output_without_line_breaks_is_passed_on_in_pieces(tmp_path: Path) -> None:
    (tmp_path / "flood.py").write_text("import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 100_000)\nsys.stdout.write('\\nend\\n')\n")
    (tmp_path / "job.yaml").write_text("name: flood\nnproc_per_node: 1\nruntime: host\ncommand: [python, flood.py]\n")
    result = launch(str(tmp_path / "job.yaml"), "--local", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pieces = [line for line in result.stdout.splitlines() if line.startswith("[local/0] yyy")]
    assert len(pieces) >= 300 and max(len(p) for p in pieces) <= (1 << 16) + 20  # 20 MB with no line break, in pieces
    run = tmp_path / "runs" / run_id_of(result.stdout)
    assert (run / "logs/local/rank0.log").read_bytes() == b"y" * 20_000_000 + b"\nend\n"  # the log keeps the bytes as written
