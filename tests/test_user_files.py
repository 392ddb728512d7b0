"""A user's files on one box: every run's own checkpoints and working directory, outputs brought
back, a script that saves next to itself, and runs listed and removed only when asked."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, launch, run_id_of, start_launcher

from launcher.node import workspace
from launcher.record.outputs import choose

pytestmark = pytest.mark.integration

SNAPSHOT = ROOT / "tests/jobs/snapshot_job.py"


def snapshot_job(folder: Path, epochs: int, extra: str = "") -> Path:
    """The tutorial-style script in a folder of its own, on a one-host local inventory."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SNAPSHOT, folder / SNAPSHOT.name)
    (folder / "cluster.yaml").write_text("hosts:\n  - name: box\n    address: local\n")
    command = json.dumps(["python", SNAPSHOT.name, str(epochs), "--out", "result.txt"])
    (folder / "job.yaml").write_text(f"name: snap\nnproc_per_node: 2\nruntime: host\ncommand: {command}\n{extra}")
    return folder / "job.yaml"


def test_a_script_that_saves_next_to_itself_gets_its_file_back_and_resumes_only_when_asked(tmp_path: Path) -> None:
    job = snapshot_job(tmp_path / "src", 2)
    runs = tmp_path / "runs"
    first = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    assert first.stdout.count("starting fresh") == 2
    run = runs / run_id_of(first.stdout)
    assert (run / "outputs/box/snapshot.pt").stat().st_size > 0 and (run / "outputs/box/result.txt").is_file()
    assert not (run / "outputs/box" / SNAPSHOT.name).exists(), "the code is not an output"
    assert "outputs of box: 2 file(s)" in first.stdout
    assert sorted(os.listdir(tmp_path / "src")) == ["cluster.yaml", "job.yaml", SNAPSHOT.name], "the source folder is untouched"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["outputs"]["box"]["files"] == 2 and summary["resumed_from"] is None

    job.write_text(job.read_text().replace('"2"', '"4"'))
    again = launch(str(job), "--runs-dir", str(runs), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("starting fresh") == 2, "a plain rerun starts fresh"
    code = [row[0] for row in json.loads((runs / run_id_of(again.stdout) / "workdir.json").read_text())["files"]]
    assert sorted(code) == sorted([SNAPSHOT.name, "cluster.yaml", "job.yaml"]), "what a run wrote is not the next run's code"

    resumed = launch(str(job), "--runs-dir", str(runs), "--resume", run_id_of(first.stdout), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert resumed.stdout.count("resuming from epoch 2") == 2 and "epoch 3 done" in resumed.stdout
    assert json.loads((run / "summary.json").read_text())["outputs"]["box"]["files"] == 2
    import torch

    assert torch.load(run / "outputs/box/snapshot.pt")["EPOCHS_RUN"] == 2, "the run resumed from keeps its file"
    newest = runs / run_id_of(resumed.stdout)
    assert torch.load(newest / "outputs/box/snapshot.pt")["EPOCHS_RUN"] == 4


def test_two_runs_of_one_job_at_once_keep_separate_checkpoints(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "6", "--sleep", "0.3", "--checkpoint"], nproc=1)
    procs = [start_launcher(job, tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    folders = [Path(json.loads((tmp_path / "runs" / run_id_of(o) / "plan.json").read_text())["nodes"][0]["env"]["LAUNCH_CHECKPOINT_DIR"])
               for o in outputs]
    assert folders[0] != folders[1]
    assert [(f / "rank0.step").read_text() for f in folders] == ["6", "6"]
    assert all("resumed" not in o for o in outputs)


def test_outputs_over_the_limit_stay_on_the_host_and_are_named(tmp_path: Path) -> None:
    (tmp_path / "write.py").write_text(
        "import os\nif os.environ['RANK'] == '0':\n"
        "    os.makedirs('out', exist_ok=True)\n"
        "    open('out/a.bin', 'wb').write(b'a' * 3000)\n    open('out/b.bin', 'wb').write(b'b' * 3000)\n"
        "    open('skip.log', 'w').write('not an output')\n")
    (tmp_path / "cluster.yaml").write_text("hosts:\n  - name: box\n    address: local\n")
    (tmp_path / "job.yaml").write_text("name: writer\nnproc_per_node: 1\nruntime: host\ncommand: [python, write.py]\n"
                                       "outputs: ['out/*']\noutputs_limit: 4kB\n")
    result = launch(str(tmp_path / "job.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "runs" / run_id_of(result.stdout)
    assert sorted(p.name for p in (run / "outputs/box/out").iterdir()) == ["a.bin"]
    summary = json.loads((run / "summary.json").read_text())
    record = summary["outputs"]["box"]
    assert record["files"] == 1 and record["left_on_host"] == ["out/b.bin"] and record["limit_bytes"] == 4000
    assert "over the 4.0 kB limit (outputs_limit) or not readable stay on it: 1 file(s)" in result.stdout and "out/b.bin" in result.stdout
    kept = Path(summary["run_folders"]["box"]) / "work"
    assert sorted(p.name for p in (kept / "out").iterdir()) == ["a.bin", "b.bin"] and (kept / "skip.log").is_file()


def test_runs_lists_newest_first_and_rm_removes_only_what_it_is_told(probe_job, tmp_path: Path) -> None:
    job = probe_job(["--steps", "2", "--checkpoint"], nproc=1)
    ids = []
    for _ in range(3):
        result = launch(str(job), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        ids.append(run_id_of(result.stdout))
    listed = launch("runs", cwd=tmp_path)
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["run", "job", "status", "started", "wall", "nodes"]
    assert [line.split()[0] for line in lines[1:]] == ids[::-1] and all(" succeeded " in line for line in lines[1:])
    folder = lambda run_id: tmp_path / "runs/jobs/probe/runs/box" / run_id  # noqa: E731

    kept = launch("rm", ids[0], cwd=tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert not (tmp_path / "runs" / ids[0]).exists() and (folder(ids[0]) / "checkpoints/rank0.step").is_file()
    assert f"removed run directory {tmp_path / 'runs' / ids[0]}" in kept.stdout and "add --checkpoints" in kept.stdout

    gone = launch("rm", ids[1], "--checkpoints", cwd=tmp_path)
    assert gone.returncode == 0 and not folder(ids[1]).exists() and not (tmp_path / "runs" / ids[1]).exists()
    assert f"removed run {ids[1]}'s checkpoints and outputs on box" in gone.stdout

    unknown = launch("rm", "no-such-run", ids[2], cwd=tmp_path)
    assert unknown.returncode == 2 and (tmp_path / "runs" / ids[2]).exists(), "a wrong name removes nothing"

    pruned = launch("prune", "--keep", "0", "--checkpoints", cwd=tmp_path)
    assert pruned.returncode == 0 and not (tmp_path / "runs" / ids[2]).exists() and not folder(ids[2]).exists()


def test_a_run_that_has_not_ended_is_not_removed(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "job-20260101-000000-abcd"
    run.mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps({"run_id": run.name, "job": "job", "backend": "gloo", "master_addr": "127.0.0.1",
                                               "master_port": 1, "nnodes": 1, "world_size": 1, "timeout_s": None, "nodes": []}))
    result = launch("rm", run.name, cwd=tmp_path)
    assert result.returncode == 1 and run.exists() and "has not ended" in result.stderr


# ---- the pure parts
def files(root: Path, contents: dict[str, str]) -> Path:
    """`root` holding these files (path -> text), folders made on the way."""
    for rel, text in contents.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_runs_folder_keeps_what_the_ranks_wrote_and_drops_the_code_they_left_alone(tmp_path: Path) -> None:
    code = files(tmp_path / "code", {"train.py": "print(1)\n", "pkg/conf.yaml": "a: 1\n"})
    old = files(tmp_path / "old", {"checkpoints/last.pt": "ckpt", "work/snapshot.pt": "snap"})
    state = tmp_path / "new"
    resumed = workspace.prepare(str(state), str(code), resume_from=str(old))
    assert resumed == {"checkpoints": 1, "work": 1}
    work = state / "work"
    assert (work / "train.py").read_text() == "print(1)\n" and (work / "snapshot.pt").read_text() == "snap"
    (work / "pkg/conf.yaml").write_text("a: 2\n")  # the job rewrites a code file: an output
    (work / "logs").mkdir()
    (work / "logs/x.txt").write_text("written")
    kept = workspace.finish(str(state))
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()) == ["logs/x.txt", "pkg/conf.yaml", "snapshot.pt"]
    assert kept == {"checkpoints": 1, "work": 3}
    assert (old / "work/snapshot.pt").read_text() == "snap" and (old / "checkpoints/last.pt").exists()

    empty = tmp_path / "empty"
    workspace.prepare(str(empty), str(code))
    assert workspace.finish(str(empty)) == {"checkpoints": 0, "work": 0} and not empty.exists(), "a run that kept nothing leaves no folder"


def test_outputs_are_chosen_by_pattern_in_path_order_within_the_limit() -> None:
    found = [("b.pt", 600), ("a.pt", 500), ("log.txt", 10), ("train.py", 99), ("sub/c.pt", 1)]
    choice = choose(found, ("*.pt",), 1000, code={"train.py": 99})
    assert choice.take == [("a.pt", 500), ("sub/c.pt", 1)] and choice.left == [("b.pt", 600)]
    everything = choose(found, ("*",), None, code={"train.py": 99})
    assert [p for p, _ in everything.take] == ["a.pt", "b.pt", "log.txt", "sub/c.pt"]
    changed = choose(found, ("*",), None, code={"train.py": 98})
    assert "train.py" in [p for p, _ in changed.take], "a code file of another size was written by the run"


def test_links_and_clashes_from_a_resumed_run_never_lead_out_of_the_runs_folder(tmp_path: Path) -> None:
    code = files(tmp_path / "code", {"pkg/a.py": "code\n", "x.py": "code\n"})
    outside = files(tmp_path / "outside", {"a.py": "a user's file\n"})
    old = tmp_path / "old"
    (old / "work/x.py").mkdir(parents=True)  # a folder where the code has a file
    (old / "work/pkg").symlink_to(outside)  # a link the job made, where the code has a folder
    state = tmp_path / "new"
    workspace.prepare(str(state), str(code), resume_from=str(old))
    work = state / "work"
    assert not (work / "pkg").is_symlink() and (work / "pkg/a.py").read_text() == "code\n"
    assert (work / "x.py").read_text() == "code\n"
    assert (outside / "a.py").read_text() == "a user's file\n", "nothing outside the run's folder was touched"
    (work / "pkg").rename(work / "pkg-moved")  # the job swaps its folder for a link out
    (work / "pkg").symlink_to(outside)
    workspace.finish(str(state))
    assert (outside / "a.py").read_text() == "a user's file\n", "finish follows no link out of the folder"


def test_a_run_whose_folder_cannot_be_prepared_keeps_no_half_copies(tmp_path: Path) -> None:
    code = files(tmp_path / "code", {"train.py": "print(1)\n"})
    old = files(tmp_path / "old", {"checkpoints/last.pt": "ckpt"})
    state = tmp_path / "new"
    with pytest.raises(OSError):
        workspace.prepare(str(state), str(code), code_list=str(tmp_path / "no-such-record.json"), resume_from=str(old))
    assert list((state / "checkpoints").iterdir()) == [] and list((state / "work").iterdir()) == []


def test_a_local_link_in_the_code_is_made_as_the_workdir_record_says(tmp_path: Path) -> None:
    code = tmp_path / "code"
    (code / "datasets").mkdir(parents=True)
    (code / "data").symlink_to(code / "datasets")  # absolute, inside the workdir
    record = tmp_path / "workdir.json"
    record.write_text(json.dumps({"files": [["data", False, 0, "x", "datasets"]]}))
    state = tmp_path / "new"
    workspace.prepare(str(state), str(code), code_list=str(record))
    assert os.readlink(state / "work/data") == "datasets", "never a link back into the source folder"


def test_only_the_folder_launch_makes_for_a_run_is_ever_removed(tmp_path: Path) -> None:
    from launcher.plan import LaunchPlan, NodeKind, NodePlan
    from launcher.run.housekeeping import is_own_folder

    run_id = "snap-20260101-000000-abcd"
    root = tmp_path / "runs" / run_id

    def node(state_dir: str, host: str = "h1", kind: NodeKind = NodeKind.CONTAINER) -> NodePlan:
        return NodePlan(host=host, kind=kind, address="192.0.2.1", node_rank=0, nproc=1, first_rank=0, image=None, argv=(),
                        env={}, secrets=(), cwd="", log_dir="", metrics_dir="", node_dir="", state_dir=state_dir)

    def plan(job: str = "snap", run: str = run_id) -> LaunchPlan:
        return LaunchPlan(run_id=run, job=job, backend="gloo", master_addr="x", master_port=1, nnodes=1, world_size=1, timeout_s=None)

    good = f"/var/tmp/launch-jobs-lab/snap/runs/h1/{run_id}"
    assert is_own_folder(root, plan(), node(good))
    assert is_own_folder(root, plan(), node(str(tmp_path / f"runs/jobs/snap/runs/box/{run_id}"), "box", NodeKind.LOCAL))
    assert not is_own_folder(root, plan(), node("/home/alice/thesis/data")), "a folder of the user's"
    assert not is_own_folder(root, plan(job="alice", run="data"), node("/home/alice/runs/thesis/data", "thesis"))
    assert not is_own_folder(root, plan(), node(f"/var/tmp/launch-jobs-lab/../../home/snap/runs/h1/{run_id}"))
    assert not is_own_folder(root, plan(), node(f"/etc/snap/runs/h1/{run_id}"))
    assert not is_own_folder(tmp_path / "runs/other", plan(), node(good)), "the plan of another run directory"


def test_an_output_that_cannot_be_read_stays_on_the_host_and_the_rest_come_back(tmp_path: Path) -> None:
    from launcher.record.outputs import bring_back

    choice = choose([("a.pt", 1), ("private.key", 1), ("z.pt", 1)], ("*",), None)
    fetched = []

    def fetch(path: str) -> None:
        if path == "private.key":
            raise PermissionError(path)
        fetched.append(path)

    bring_back(choice, fetch)
    assert fetched == ["a.pt", "z.pt"] and choice.left == [("private.key", 1)]
