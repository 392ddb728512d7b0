"""The command line's contract for bad input: one line on stderr, exit code 2, nothing created."""

from __future__ import annotations

import json

from pathlib import Path

import pytest

from conftest import launch

CLUSTER = "hosts:\n  - name: box\n    address: local\n"


@pytest.mark.parametrize(
    "job, args, message",
    [
        ("command: [python, x.py]\nnproc: 2\n", [], "{job}: unknown key 'nproc'; did you mean 'nproc_per_node'?"),
        ("command: [python, x.py]\nnodes: 3\n", [], "{job}: nodes: 3 is more than the 1 host in {cluster}"),
        ("command: [python, x.py]\n", ["--nodes", "2"], "--nodes: 2 is more than the 1 host in {cluster}"),
        ("command: [python, x.py]\n", ["--nodes", "0"], "--nodes: expected a positive integer, got 0"),
        ("command: [python, x.py]\nbackend: nccl\n", [],
         "{job}: backend: nccl needs GPUs, but host 'box' in {cluster} has gpus: 0; use gloo or auto"),
        ("command: python x.py\n", [], "{job}: command: expected a list of strings, e.g. [python, train.py], got 'python x.py'"),
        ("command: [python, x.py]\ncluster: nowhere.yaml\n", [], "{dir}/nowhere.yaml: file not found"),
        ("command: [python, x.py]\ntimeout: soon\n", [], "{job}: timeout: expected a duration such as 90s, 30m, 1h or 1h30m, got 'soon'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_creates_nothing(tmp_path: Path, job: str, args: list[str], message: str) -> None:
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    job_path = tmp_path / "job.yaml"
    job_path.write_text("cluster: cluster.yaml\n" + job if "cluster:" not in job else job)
    result = launch(str(job_path), "--runs-dir", str(tmp_path / "runs"), *args, cwd=tmp_path)
    assert result.returncode == 2
    expected = "launch: error: " + message.format(job=job_path, cluster=tmp_path / "cluster.yaml", dir=tmp_path)
    assert result.stderr.splitlines() == [expected]
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("name", "value", "expected"), [
    *(("LAUNCH_RELAY_IDLE_S", v, "expected a number of seconds from 3 to 3600") for v in ("soon", "0", "1e9")),
    ("LAUNCH_IMAGE_COMPRESSION", "gzip", "expected one of auto, on, off"),
])
def test_a_bad_transfer_setting_exits_2_before_anything_is_made(tmp_path: Path, name: str, value: str, expected: str) -> None:
    """LAUNCH_RELAY_IDLE_S and LAUNCH_IMAGE_COMPRESSION are read for lab runs; a bad value stops the
    launch before its run directory, before any host is reached (the inventory's host is a
    documentation address)."""
    (tmp_path / "cluster.yaml").write_text("hosts:\n  - name: far\n    address: 192.0.2.10\n")
    (tmp_path / "job.yaml").write_text("cluster: cluster.yaml\ncommand: [python, x.py]\n")
    result = launch(str(tmp_path / "job.yaml"), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, env={name: value})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"launch: error: {name}={value!r}: {expected}"]
    assert not (tmp_path / "runs").exists()


def test_missing_job_file(tmp_path: Path) -> None:
    result = launch("nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["launch: error: nope.yaml: file not found"]


def test_usage_error_exits_2(tmp_path: Path) -> None:
    result = launch("--no-such-flag", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "launch: error: unknown option '--no-such-flag'; launch --help lists the options\n"


@pytest.mark.parametrize(
    "job, args, message",
    [
        ("command: [python, x.py]\n", ["--sweep"], "{job}: scaling: --sweep needs node counts, e.g. scaling: [1, 2, 3]"),
        ("command: [python, x.py]\nscaling: [1, 2]\n", ["--sweep"], "{job}: scaling: 2 is more than the 1 host in {cluster}"),
        ("command: [python, x.py]\nscaling: [1]\n", ["--sweep", "--nodes", "1"], "--sweep runs every node count of the job's scaling; leave out --nodes"),
    ],
)
def test_bad_sweeps_exit_2_and_create_nothing(tmp_path: Path, job: str, args: list[str], message: str) -> None:
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    job_path = tmp_path / "job.yaml"
    job_path.write_text("cluster: cluster.yaml\nruntime: host\n" + job)
    result = launch(str(job_path), "--runs-dir", str(tmp_path / "runs"), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["launch: error: " + message.format(job=job_path, cluster=tmp_path / "cluster.yaml")]
    assert not (tmp_path / "runs").exists()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    result = launch("report", str(tmp_path / "nothing"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"launch: error: {tmp_path / 'nothing'}: no summary.json; expected a run directory"]


@pytest.mark.parametrize("status", ["failed", "interrupted", "stopped", None])
def test_report_refuses_a_run_that_did_not_succeed(tmp_path: Path, status: str | None) -> None:
    for name, state in (("good", "succeeded"), ("bad", status)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": state, "job": "j", "nodes": 1}))
    result = launch("report", str(tmp_path / "good"), str(tmp_path / "bad"), cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"launch: error: {tmp_path / 'bad'}: the run {status or 'did not end'}; only runs that succeeded")
    assert not (tmp_path / "scaling.json").exists()


def test_check_of_a_missing_inventory_is_bad_input(tmp_path: Path) -> None:
    result = launch("check", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["launch: error: nope.yaml: file not found"]


def test_check_of_this_machine(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text("hosts:\n  - {name: here, address: local, gpus: 3}\n")
    result = launch("check", str(tmp_path / "cluster.yaml"), "--port", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith("here         this machine     NOT USABLE: 0 GPU(s) visible, the inventory says 3")


def test_check_with_a_port_out_of_range_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    result = launch("check", str(tmp_path / "cluster.yaml"), "--port", "70000", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["launch: error: --port: expected an integer from 1 to 65534, got 70000"]


def test_logs_of_something_that_is_not_a_run_is_bad_input(tmp_path: Path) -> None:
    result = launch("logs", "no-such-run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["launch: error: no-such-run: not a run directory or a run id under runs; runs holds no runs"]


def test_version_help_and_a_mistyped_command(tmp_path: Path) -> None:
    from launcher import __version__

    version = launch("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout == f"launch {__version__}\n"
    helped = launch("--help", cwd=tmp_path)
    assert helped.returncode == 0 and "exit codes: 0 the run succeeded" in helped.stdout and "130 interrupted" in helped.stdout
    assert "examples:" in helped.stdout and "--env KEY=VALUE" in helped.stdout
    typo = launch("stauts", cwd=tmp_path)
    assert typo.returncode == 2
    assert typo.stderr == "launch: error: unknown command 'stauts'; did you mean 'status'? (commands: check, status, logs, stop, report, runs, rm, prune, or a job file)\n"


def test_a_global_flag_before_the_command(tmp_path: Path) -> None:
    result = launch("--debug", "status", "--runs-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"no runs in {tmp_path / 'none'}\n"
    for first in (["--runs-dir", str(tmp_path / "other")], [f"--runs-dir={tmp_path / 'other'}", "--debug"]):
        result = launch(*first, "status", cwd=tmp_path)
        assert result.returncode == 0 and result.stdout == f"no runs in {tmp_path / 'other'}\n", result.stderr


@pytest.mark.parametrize("args, message", [
    (["--env", "NOEQUALS"], "--env: expected KEY=VALUE, got 'NOEQUALS'"),
    (["--env", "RANK=3"], "--env RANK: is set for every rank by torchrun or the launcher; a job cannot set it"),
    (["--env", "LAUNCH_X=1"], "--env LAUNCH_X: names starting with LAUNCH_ are set by the launcher; choose another name"),
    (["--env", "A-B=1"], "--env A-B: expected a variable name of letters, digits and '_'"),
    (["--nproc-per-node", "0"], "--nproc-per-node: expected an integer from 1 to 1024, got 0"),
])
def test_bad_overrides_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "job.yaml").write_text("command: [python, x.py]\nruntime: host\n")
    result = launch(str(tmp_path / "job.yaml"), "--local", *args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == f"launch: error: {message}\n"
    assert not (tmp_path / "runs").exists()


def test_overrides_reach_the_ranks(tmp_path: Path) -> None:
    (tmp_path / "show.py").write_text("import os, sys\nprint('seen', os.environ.get('LR'), os.environ.get('WORLD_SIZE'), sys.argv[1:], flush=True)\n")
    (tmp_path / "job.yaml").write_text("name: show\nruntime: host\nnproc_per_node: 1\ncommand: [python, show.py, --fixed]\nenv: {LR: '0.1'}\n")
    result = launch(str(tmp_path / "job.yaml"), "--local", "--env", "LR=0.5", "--nproc-per-node", "2",
                    "--runs-dir", str(tmp_path / "runs"), "--", "--epochs", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        assert f"[local/{rank}] seen 0.5 2 ['--fixed', '--epochs', '3']" in result.stdout


def test_report_looks_run_ids_up_under_runs_dir_and_lists_recent_runs(tmp_path: Path) -> None:
    (tmp_path / "elsewhere" / "job-1").mkdir(parents=True)
    (tmp_path / "elsewhere" / "job-1" / "plan.json").write_text("{}")
    (tmp_path / "elsewhere" / "job-1" / "summary.json").write_text(json.dumps({"status": "failed"}))
    found = launch("report", "job-1", "--runs-dir", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert found.returncode == 2 and f"{tmp_path / 'elsewhere' / 'job-1'}: the run failed" in found.stderr
    unknown = launch("report", "nope", "--runs-dir", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr == (f"launch: error: nope: not a run directory or a run id under {tmp_path / 'elsewhere'}; "
                              f"recent runs in {tmp_path / 'elsewhere'}: job-1\n")


def test_a_sweep_runs_each_count_with_the_flags_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher import cli
    from launcher.run import conduct

    asked = []
    monkeypatch.setattr(conduct, "run_once", lambda job, cluster, request: (asked.append(request), (1, None))[1])
    (tmp_path / "cluster.yaml").write_text("hosts:\n  - {name: box, address: local}\n")
    (tmp_path / "job.yaml").write_text("cluster: cluster.yaml\ncommand: [python, x.py]\nscaling: [1]\n")
    assert cli.main([str(tmp_path / "job.yaml"), "--sweep", "--verbose", "--debug", "--runs-dir", str(tmp_path / "runs")]) == 1
    assert [(r.nodes, r.verbose, r.debug, r.dry_run, r.resume, r.runs_dir.parent) for r in asked] == [
        (1, True, True, False, None, (tmp_path / "runs").resolve())]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from launcher.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    (["job.yaml", "--dryrun"], "unknown option '--dryrun'; did you mean '--dry-run'?"),
    (["job.yaml", "--dry"], "unknown option '--dry'; did you mean '--dry-run'?"),
    (["job.yaml", "--nproc", "2"], "unknown option '--nproc'; did you mean '--nproc-per-node'?"),
    (["job.yaml", "--nproc=2"], "unknown option '--nproc'; did you mean '--nproc-per-node'?"),
    (["job.yaml", "--loc"], "unknown option '--loc'; did you mean '--local'?"),
    (["--no-such-flag"], "unknown option '--no-such-flag'; launch --help lists the options"),
    (["job.yaml", "-x"], "unknown option '-x'; launch --help lists the options"),
    (["logs", "r1", "--follw"], "unknown option '--follw'; did you mean '--follow'?"),
    (["logs", "r1", "--fol"], "unknown option '--fol'; did you mean '--follow'?"),
    (["status", "--jsn"], "unknown option '--jsn'; did you mean '--json'?"),
    (["stop", "r1", "--runs-dri", "x"], "unknown option '--runs-dri'; did you mean '--runs-dir'?"),
    (["stop", "r1", "--runs"], "unknown option '--runs'; did you mean '--runs-dir'?"),
    (["report", "r1", "--ot", "x"], "unknown option '--ot'; did you mean '--out'?"),
    (["check", "c.yaml", "--prot", "1"], "unknown option '--prot'; did you mean '--port'?"),
    (["check", "--po", "1", "c.yaml"], "unknown option '--po'; did you mean '--port'?"),
    (["runs", "--jsn"], "unknown option '--jsn'; did you mean '--json'?"),  # parsers built elsewhere, made strict
    (["rm", "r1", "--checkpoint"], "unknown option '--checkpoint'; did you mean '--checkpoints'?"),
])
def test_an_unknown_or_shortened_option_is_one_line_with_a_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(capsys, *argv) == (2, "", f"launch: error: {message}\n")
    assert list(tmp_path.iterdir()) == []


def test_the_usage_for_a_missing_job_file(tmp_path: Path) -> None:
    result = launch(cwd=tmp_path)
    assert result.returncode == 2 and "usage: launch" in result.stderr


@pytest.fixture
def runs_asked(monkeypatch: pytest.MonkeyPatch) -> list:
    """The (job, request) of each run the command line asks for; none is started."""
    from launcher.cli import job as cli

    asked: list = []
    monkeypatch.setattr(cli, "run_once", lambda job, cluster, request: (asked.append((job, request)), (0, None))[1])
    return asked


def test_options_in_full_and_arguments_after_the_double_dash(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch, runs_asked: list) -> None:
    (tmp_path / "job.yaml").write_text("command: [python, x.py]\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "job.yaml", "--local", "--nproc-per-node=2", "--runs-dir=r", "--dry-run",
                            "--", "--dryrun", "-x", "--nproc", "-1")
    assert code == 0, err
    job, request = runs_asked[0]
    assert job.command == ("python", "x.py", "--dryrun", "-x", "--nproc", "-1") and job.nproc_per_node == 2
    assert request.dry_run and request.runs_dir == Path("r")


def test_a_folder_holding_job_yaml_is_that_job(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, runs_asked: list) -> None:
    (tmp_path / "jobs" / "a").mkdir(parents=True)
    (tmp_path / "jobs" / "a" / "job.yaml").write_text("command: [python, x.py]\n")
    monkeypatch.chdir(tmp_path)
    for folder in ("jobs/a", "jobs/a/", "jobs/a/../a"):
        assert run_main(capsys, folder, "--local", "--dry-run")[0] == 0
        assert runs_asked.pop()[0].path == Path("jobs/a/job.yaml")
    (tmp_path / "empty").mkdir()
    assert run_main(capsys, "empty", "--local") == (2, "", "launch: error: empty: is a directory holding no job.yaml; "
                                                           "name the job file\n")
    assert run_main(capsys, "check", "empty") == (2, "", "launch: error: empty: is a directory holding no job.yaml or "
                                                         "cluster.yaml; name the file\n")


def test_check_takes_a_folder_as_its_job_or_else_its_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.hosts import check

    checked: list = []
    monkeypatch.setattr(check, "check_job", lambda job, hosts, *a, **k: (checked.append(job.path), ([], []))[1])
    monkeypatch.setattr(check, "check_cluster", lambda cluster, *a, **k: (checked.append(cluster.path), [])[1])
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "cluster.yaml").write_text(CLUSTER)
    monkeypatch.chdir(tmp_path)
    assert run_main(capsys, "check", "lab")[0] == 0
    (tmp_path / "lab" / "job.yaml").write_text("command: [python, x.py]\n")
    assert run_main(capsys, "check", "lab")[0] == 0
    assert checked == [Path("lab/cluster.yaml"), Path("lab/job.yaml")]


def test_an_unexpected_error_once_the_run_directory_exists_is_kept_there(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.cli import job as job_commands
    from launcher.image import wheels
    from launcher.record import rundir

    monkeypatch.setattr(wheels, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(rundir, "MADE", [])
    made: list = []

    def fails_after_making_the_run_directory(job, cluster, request):
        made.append(rundir.new_run_paths(request.runs_dir, job.name))
        rundir.create(made[-1])
        raise RuntimeError("boom while deploying")

    monkeypatch.setattr(job_commands, "run_once", fails_after_making_the_run_directory)
    (tmp_path / "job.yaml").write_text("command: [python, x.py]\n")
    code, out, err = run_main(capsys, str(tmp_path / "job.yaml"), "--local", "--runs-dir", str(tmp_path / "runs"))
    error_file = made[0].root / "launcher-error.txt"
    assert (code, out) == (1, "")
    assert err == f"launch: unexpected error: RuntimeError: boom while deploying; the traceback is in {error_file} (--debug prints it)\n"
    assert "Traceback" in error_file.read_text() and "boom while deploying" in error_file.read_text()
    assert not (tmp_path / "cache" / "last-error.txt").exists()
    # once the run has ended (its summary written), a later error is not the run's
    rundir.write_json(made[0].summary_file, {"status": "succeeded"})
    monkeypatch.setattr(job_commands, "run_once", lambda *a: (_ for _ in ()).throw(RuntimeError("late error")))
    code, _, err = run_main(capsys, str(tmp_path / "job.yaml"), "--local", "--runs-dir", str(tmp_path / "runs"))
    assert code == 1 and f"the traceback is in {tmp_path / 'cache' / 'last-error.txt'}" in err
    assert "late error" in (tmp_path / "cache" / "last-error.txt").read_text() and "late error" not in error_file.read_text()


def test_an_unexpected_error_writing_a_runs_inputs_is_kept_in_its_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.image import wheels
    from launcher.record import rundir

    monkeypatch.setattr(wheels, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(rundir, "MADE", [])
    monkeypatch.setattr(rundir, "copy_input", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk gremlin")))
    (tmp_path / "job.yaml").write_text("command: [python, x.py]\nruntime: host\n")
    code, _, err = run_main(capsys, str(tmp_path / "job.yaml"), "--local", "--runs-dir", str(tmp_path / "runs"))
    [run] = [p for p in (tmp_path / "runs").iterdir() if p.name != "checkpoints"]
    assert code == 1, err
    assert err.startswith(f"launch: unexpected error: RuntimeError: disk gremlin; the traceback is in {run / 'launcher-error.txt'}")
    assert "disk gremlin" in (run / "launcher-error.txt").read_text()


def test_a_local_sweep_runs_each_count_as_that_many_processes_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher import cli
    from launcher.run import conduct

    asked = []
    monkeypatch.setattr(conduct, "run_once", lambda job, cluster, request: (asked.append((job, request)), (1, None))[1])
    (tmp_path / "job.yaml").write_text("command: [python, x.py]\nnproc_per_node: 2\nscaling: [1, 3]\n")
    assert cli.main([str(tmp_path / "job.yaml"), "--sweep", "--local", "--runs-dir", str(tmp_path / "runs")]) == 1
    assert [(job.nproc_per_node, job.nodes, request.nodes) for job, request in asked] == [(2, None, None)]
    monkeypatch.setattr(conduct, "run_once", lambda job, cluster, request: (asked.append((job, request)), (0, None))[1])
    asked.clear()
    assert cli.main([str(tmp_path / "job.yaml"), "--sweep", "--local", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert [(job.nproc_per_node, request.nodes) for job, request in asked] == [(2, None), (6, None)]


def test_a_sweep_that_cannot_run_at_one_count_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from launcher import cli
    from launcher.run import conduct

    monkeypatch.setattr(conduct, "run_once", lambda *a: pytest.fail("a run started"))
    (tmp_path / "cluster.yaml").write_text("hosts:\n  - {name: a, address: local}\n  - {name: b, address: local}\n")
    (tmp_path / "job.yaml").write_text("cluster: cluster.yaml\ncommand: [python, x.py]\nnproc_per_node: 1\nscaling: [1, 2]\n")
    assert cli.main([str(tmp_path / "job.yaml"), "--sweep", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "address: local, which only a one-node run can use" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "job.yaml").write_text("command: [python, x.py]\nscaling: [1, 2]\n")
    assert cli.main([str(tmp_path / "job.yaml"), "--sweep", "--local"]) == 2
    assert "--sweep --local runs N nodes as N x nproc_per_node processes here, so it needs an integer" in capsys.readouterr().err
