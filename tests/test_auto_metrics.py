"""Step metrics for scripts not written for `launch`: measured in the ranks' Python, read back into
the summary, and scaling from wall time when no run has step metrics at all."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from conftest import ROOT, launch, lab_job, run_id_of
from launcher.errors import SpecError
from launcher.node.rankexec import STARTUP_DIR
from launcher.record.outcome import RunOutcome, RunState
from launcher.results.scaling import Basis, check_comparable, markdown, scaling_rows, write_scaling
from launcher.results.summary import build_summary
from test_metrics import fake_run, plan, summary

BOOK = ROOT / "tests/jobs/book_ddp.py"
WARMUP = 3  # the default warmup_steps
STEPS_LINE = re.compile(r"^rank (\d+): (\d+) optimizer steps of (\d+) samples$", re.M)

# imports torch, no DataLoader; of its two optimizers only the first may count
NO_LOADER = """\
import sys
import torch

w = torch.zeros(3, requires_grad=True)
first, second = torch.optim.SGD([w], lr=0.1), torch.optim.SGD([w], lr=0.1)
for step in range(5):
    (w - 1).pow(2).sum().backward()
    first.step()
    second.step()
    first.zero_grad()
    print(f"step {step} w {w[0].item():.4f}")
print("done, on stderr", file=sys.stderr)
"""


def local_job(tmp_path: Path, script: Path, args: list[str], nproc: int = 2) -> Path:
    """A job running `script` (in its own folder) with `args` in `nproc` processes, for `launch --local`,
    on a free port: other one-box runs may hold torchrun's default."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = json.dumps(["python", script.name, *args])
    (tmp_path / "job.yaml").write_text(
        f"name: {script.stem}\nworkdir: {script.parent}\nnproc_per_node: {nproc}\ncommand: {command}\n"
        f"env: {{OMP_NUM_THREADS: '1'}}\nrdzv_port: {port}\n"
    )
    return tmp_path / "job.yaml"


def launch_local(job: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    result = launch(str(job), "--local", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return result, tmp_path / "runs" / run_id_of(result.stdout)


def auto_records(run: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics" / f"rank{rank}.auto.jsonl").read_text().splitlines()]


# ---- measured in the ranks, read back into the summary

@pytest.mark.integration
@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_book_script_run_unmodified_gets_step_metrics(tmp_path: Path, accumulate: int) -> None:
    job = local_job(tmp_path, BOOK, ["--backend", "gloo", "--epochs", "2", "--batch-size", "16", "--accumulate", str(accumulate)])
    result, run = launch_local(job, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    per_step = 16 * accumulate
    made = {int(r): (int(s), int(b)) for log in (run / "logs/local").glob("rank?.log") for r, s, b in STEPS_LINE.findall(log.read_text())}
    assert made == {0: (32 // accumulate, per_step), 1: (32 // accumulate, per_step)}  # 512 samples, 2 ranks, 2 epochs
    assert summary["samples_per_step_per_rank"] == per_step
    for r in summary["ranks"]:
        steps = made[r["rank"]][0]
        assert r["metrics_source"] == "auto"
        assert (r["steps"], r["warmup_steps_excluded"]) == (steps - WARMUP, WARMUP)
        assert r["samples_per_s"] > 0 and r["step_time_median_s"] > 0
        records = auto_records(run, r["rank"])
        assert [x["step"] for x in records] == list(range(steps))
        # every step counts exactly its training batches: the no_grad evaluation between epochs adds nothing
        assert [x["samples"] for x in records] == [per_step] * steps
        steady_time = sum(x["step_time_s"] for x in records[WARMUP:])
        assert r["samples_per_s"] == pytest.approx(per_step * (steps - WARMUP) / steady_time, rel=1e-3)
        assert not (run / "metrics" / f"rank{r['rank']}.jsonl").exists(), "the script writes no metrics of its own"
    assert summary["throughput_samples_per_s"] == pytest.approx(sum(r["samples_per_s"] for r in summary["ranks"]), rel=1e-3)
    assert "step metrics measured by launch (optimizer steps, DataLoader batch sizes): the job wrote none" in result.stdout


@pytest.mark.integration
def test_a_job_with_its_own_metrics_keeps_them(tmp_path: Path) -> None:
    result, run = launch_local(local_job(tmp_path, ROOT / "jobs/allreduce/train.py", ["--steps", "20"]), tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    for r in summary["ranks"]:
        assert r["metrics_source"] == "job"
        assert (r["steps"], r["warmup_steps_excluded"]) == (20 - WARMUP, WARMUP)
    assert summary["samples_per_step_per_rank"] == 32  # the job's --batch default, as it wrote it
    assert "measured by launch" not in result.stdout
    assert not list((run / "metrics").glob("*.auto.jsonl")), "no optimizer stepped: launch recorded nothing"


# imports torch and steps 3 times, then starts 2 processes of its own that step 4 times each
SPAWNS = """\
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader


def train(index: int, steps: int) -> None:
    w = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1)
    for step, x in zip(range(steps), DataLoader(torch.ones(64, 3), batch_size=8)):
        (w - x).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"process {index}: {steps} steps", flush=True)


if __name__ == "__main__":
    train(-1, 3)
    mp.spawn(train, args=(4,), nprocs=2)
"""


@pytest.mark.integration
def test_processes_a_rank_starts_itself_do_not_add_to_its_steps(tmp_path: Path) -> None:
    script = tmp_path / "spawns.py"
    script.write_text(SPAWNS)
    result, run = launch_local(local_job(tmp_path, script, [], nproc=1), tmp_path)
    assert "process 0: 4 steps" in result.stdout and "process 1: 4 steps" in result.stdout
    assert [(x["step"], x["samples"]) for x in auto_records(run, 0)] == [(0, 8), (1, 8), (2, 8)]


@pytest.mark.integration
def test_a_script_without_a_data_loader_runs_as_without_launch(tmp_path: Path) -> None:
    script = tmp_path / "no_loader.py"
    script.write_text(NO_LOADER)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert plain.returncode == 0, plain.stderr
    result, run = launch_local(local_job(tmp_path, script, [], nproc=1), tmp_path)
    assert (run / "logs/local/rank0.log").read_text() == plain.stdout + plain.stderr
    # one record per step of the first optimizer, without samples: no DataLoader said how many
    assert [(x["step"], sorted(x)) for x in auto_records(run, 0)] == [(i, ["step", "step_time_s"]) for i in range(5)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["throughput_samples_per_s"] is None and summary["metrics_missing"] == [0]
    assert summary["ranks"][0]["metrics_source"] is None


def test_the_startup_hook_runs_the_sitecustomize_it_shadows_and_never_imports_torch(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("print('the other sitecustomize ran')\n")
    env = dict(os.environ, PYTHONPATH=f"{STARTUP_DIR}{os.pathsep}{other}", LAUNCH_METRICS_DIR=str(tmp_path), RANK="0")
    code = "import sys; print('torch imported:', any(m.split('.')[0] == 'torch' for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "the other sitecustomize ran\ntorch imported: False\n", "")


def test_a_jobs_own_records_win_over_measured_ones(tmp_path: Path) -> None:
    paths = fake_run(tmp_path, {0: [9, 0.1, 0.1], 1: None}, {0: "a", 1: "a"})
    for rank in (0, 1):
        paths.auto_metrics_file(rank).write_text("".join(json.dumps({"step": i, "samples": 7, "step_time_s": 0.5}) + "\n" for i in range(4)))
    mixed = build_summary(plan(), RunOutcome(RunState.SUCCEEDED, 5.0), paths)
    # rank 1 wrote none of its own: it is missing rather than counted in launch's units beside the job's
    assert [(r["metrics_source"], r["samples_per_s"]) for r in mixed["ranks"]] == [("job", pytest.approx(8 / 0.2)), (None, None)]
    assert mixed["metrics_missing"] == [1]
    paths.metrics_file(0).unlink()
    measured = build_summary(plan(), RunOutcome(RunState.SUCCEEDED, 5.0), paths)
    assert [(r["metrics_source"], r["steps"], r["samples_per_s"]) for r in measured["ranks"]] == [("auto", 3, 14.0), ("auto", 3, 14.0)]
    assert measured["samples_per_step_per_rank"] == 7


# ---- scaling from wall time when no run has step metrics

def timed(nodes: int, wall: float, status: str = "succeeded") -> dict:
    return {**summary(nodes, None, batch=None, run=f"r{nodes}-{wall}"), "wall_time_s": wall, "status": status}


def test_without_throughput_scaling_is_strong_scaling_from_wall_time(tmp_path: Path) -> None:
    runs = {"a": timed(1, 90.0), "b": timed(1, 110.0), "c": timed(2, 60.0), "d": timed(4, 40.0)}
    assert check_comparable(runs) is Basis.WALL_TIME
    rows = scaling_rows(list(runs.values()))
    assert [(r["nodes"], r["wall_time_s"], r["throughput_samples_per_s"], r["basis"]) for r in rows] == [
        (1, 100.0, None, "wall_time"), (2, 60.0, None, "wall_time"), (4, 40.0, None, "wall_time")]
    assert [r["speedup"] for r in rows] == [1.0, pytest.approx(100 / 60, abs=1e-5), 2.5]
    assert [r["efficiency"] for r in rows] == [1.0, pytest.approx(100 / 120, abs=1e-5), 0.625]
    table = markdown(rows, "job")
    assert "| nodes | world size | wall time (s) | speedup | efficiency |" in table
    assert "| 2 | 4 | 60.00 | 1.67 | 83.3% |" in table and "Strong scaling from wall time" in table
    assert write_scaling(tmp_path, runs) == rows
    assert json.loads((tmp_path / "scaling.json").read_text()) == rows
    image = matplotlib.image.imread(tmp_path / "scaling.png")
    assert image[..., :3].std() > 0.05, "the plot is not blank"


def test_with_throughput_scaling_stays_weak_scaling() -> None:
    runs = {"a": {**summary(1, 100), "wall_time_s": 50.0}, "b": {**summary(2, 150), "wall_time_s": 70.0}}
    assert check_comparable(runs) is Basis.THROUGHPUT
    rows = scaling_rows(list(runs.values()))
    assert [(r["basis"], r["speedup"], r["wall_time_s"]) for r in rows] == [("throughput", 1.0, 50.0), ("throughput", 1.5, 70.0)]
    assert "Weak scaling at a fixed per-rank batch" in markdown(rows, "job")


@pytest.mark.parametrize("runs, message", [
    ({"a": timed(1, 90.0), "b": timed(2, 80.0, status="failed")},
     "b: status failed; scaling from wall time (no run has step metrics) compares only runs that succeeded"),
    ({"a": timed(1, 90.0), "b": summary(2, 150)},
     "a: has no throughput (status succeeded, metrics missing); it cannot be compared"),
])
def test_wall_time_runs_that_cannot_be_compared_are_refused(runs: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        check_comparable(runs)
    assert str(info.value) == message


# ---- on the simulated lab

@pytest.mark.integration
def test_a_sweep_of_the_book_script_scales_by_measured_throughput(tmp_path: Path, lab, base_image: str) -> None:
    job = lab_job(tmp_path, lab, base_image, BOOK, ["--backend", "gloo", "--epochs", "1", "--samples", "256"], extra="scaling: [1, 2]\n")
    result = launch(str(job), "--sweep", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    (sweep,) = (tmp_path / "runs").glob("lab-book_ddp-sweep-*")
    rows = json.loads((sweep / "scaling.json").read_text())
    assert [(r["nodes"], r["world_size"], r["basis"]) for r in rows] == [(1, 1, "throughput"), (2, 2, "throughput")]
    for run in sorted(p for p in sweep.iterdir() if p.is_dir()):
        summary = json.loads((run / "summary.json").read_text())
        steps = 256 // 16 // summary["world_size"]
        (row,) = [r for r in rows if r["nodes"] == summary["nodes"]]
        assert row["throughput_samples_per_s"] == pytest.approx(summary["throughput_samples_per_s"], abs=1e-3) and row["throughput_samples_per_s"] > 0
        assert summary["samples_per_step_per_rank"] == 16
        for r in summary["ranks"]:
            assert (r["metrics_source"], r["steps"]) == ("auto", steps - WARMUP)
            # brought back from the host that ran the rank, like the job's own files
            assert [x["samples"] for x in auto_records(run, r["rank"])] == [16] * steps
