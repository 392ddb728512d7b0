"""The numbers of a summary and of a scaling table, against values worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from launcher.errors import SpecError
from launcher.record.outcome import RunOutcome, RunState
from launcher.results.stats import StepRecord, percentile, rank_stats, read_records, stragglers
from launcher.plan import LaunchPlan
from launcher.record.rundir import RunPaths
from launcher.results.scaling import check_comparable, markdown, scaling_rows, write_scaling
from launcher.results.summary import build_summary

TIMES = [1.0, 0.5, 0.2, 0.1, 0.1, 0.3]


def records(times=TIMES, samples=10.0) -> list[StepRecord]:
    return [StepRecord(i, samples, t) for i, t in enumerate(times)]


def test_warm_up_steps_are_left_out() -> None:
    stats = rank_stats(records(), warmup_steps=3)  # steady: 0.1, 0.1, 0.3
    assert (stats.steps, stats.warmup_excluded, stats.samples) == (3, 3, 30.0)
    assert stats.samples_per_s == pytest.approx(30 / 0.5)
    assert stats.step_time_median_s == pytest.approx(0.1)
    assert stats.step_time_p95_s == pytest.approx(0.3)


def test_without_warm_up_every_step_counts() -> None:
    stats = rank_stats(records(), warmup_steps=0)
    assert stats.samples_per_s == pytest.approx(60 / 2.2)
    assert stats.step_time_median_s == pytest.approx(0.25)
    assert stats.step_time_p95_s == pytest.approx(1.0)
    assert stats.samples_per_step == 10.0


def test_a_rank_with_only_warm_up_steps_is_measured_on_all_of_them() -> None:
    stats = rank_stats(records([0.4, 0.2]), warmup_steps=3)
    assert (stats.steps, stats.warmup_excluded) == (2, 0)
    assert stats.samples_per_s == pytest.approx(20 / 0.6)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5.0], 95) == 5.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert percentile([float(i) for i in range(1, 21)], 50) == 10.0


def test_empty_file_and_truncated_last_line(tmp_path: Path) -> None:
    empty = tmp_path / "rank0.jsonl"
    empty.write_text("")
    assert read_records(empty) == [] and rank_stats(read_records(empty), 3) is None
    torn = tmp_path / "rank1.jsonl"
    torn.write_text('{"step": 0, "samples": 8, "step_time_s": 0.5}\nnot json\n{"step": 1, "samples": 8, "step_time_s": 0.25}\n{"step": 2, "samp')
    assert read_records(torn) == [StepRecord(0, 8.0, 0.5), StepRecord(1, 8.0, 0.25)]
    assert read_records(tmp_path / "absent.jsonl") == []


def test_stragglers_are_well_above_the_median() -> None:
    # median of medians = (0.1 + 0.13) / 2 = 0.115; 1.25 x 0.115 = 0.14375
    assert stragglers({0: 0.1, 1: 0.1, 2: 0.13, 3: 0.2}) == [3]
    assert stragglers({0: 0.1, 1: 0.12}) == []
    assert stragglers({0: 5.0}) == []


def fake_run(tmp_path: Path, metrics: dict[int, list[float] | None], hosts: dict[int, str]) -> RunPaths:
    paths = RunPaths(tmp_path / "run")
    for rank, host in hosts.items():
        log_dir = paths.host_logs_dir(host)
        log_dir.mkdir(parents=True, exist_ok=True)
        paths.rank_log(host, rank).write_text("")
        paths.rank_status(host, rank).write_text(json.dumps({"rank": rank, "host": host, "exit_code": 0, "wall_time_s": 2.0, "end_time": 1.0}))
    paths.metrics_dir.mkdir(parents=True, exist_ok=True)
    for rank, times in metrics.items():
        if times is not None:
            paths.metrics_file(rank).write_text("".join(json.dumps({"step": i, "samples": 4, "step_time_s": t}) + "\n" for i, t in enumerate(times)))
    return paths


def plan(nodes: int = 2, warmup: int = 1) -> LaunchPlan:
    return LaunchPlan("run-1", "job", "gloo", "192.0.2.1", 29500, nodes, 3, None, (), warmup_steps=warmup)


def test_summary_with_a_missing_rank_and_a_straggling_host(tmp_path: Path) -> None:
    paths = fake_run(tmp_path, {0: [9, 0.1, 0.1], 1: [9, 0.1, 0.1], 2: None}, {0: "a", 1: "b", 2: "b"})
    paths2 = fake_run(tmp_path / "slow", {0: [9, 0.1, 0.1], 1: [9, 0.1, 0.1], 2: [9, 0.4, 0.4]}, {0: "a", 1: "a", 2: "b"})
    summary = build_summary(plan(), RunOutcome(RunState.SUCCEEDED, 5.0), paths)
    assert summary["metrics_missing"] == [2]
    assert summary["throughput_samples_per_s"] == pytest.approx(2 * 8 / 0.2)  # ranks 0 and 1, warm-up left out
    assert [r["steps"] for r in summary["ranks"]] == [2, 2, 0]
    assert summary["ranks"][2]["samples_per_s"] is None and summary["ranks"][2]["wall_time_s"] == 2.0
    assert summary["samples_per_step_per_rank"] == 4
    slow = build_summary(plan(), RunOutcome(RunState.SUCCEEDED, 5.0), paths2)
    assert slow["stragglers"] == {"ranks": [2], "hosts": ["b"]}
    assert slow["ranks"][2]["step_time_p95_s"] == pytest.approx(0.4)


def summary(nodes: int, throughput: float | None, job: str = "job", batch: float = 32, run: str = "") -> dict:
    return {"run_id": run or f"r{nodes}-{throughput}", "job": job, "nodes": nodes, "world_size": 2 * nodes,
            "throughput_samples_per_s": throughput, "samples_per_step_per_rank": batch, "status": "succeeded"}


def test_scaling_rows_by_hand() -> None:
    rows = scaling_rows([summary(1, 100), summary(1, 120), summary(2, 200), summary(4, 330)])
    assert [(r["nodes"], r["world_size"], r["throughput_samples_per_s"]) for r in rows] == [(1, 2, 110), (2, 4, 200), (4, 8, 330)]
    assert [r["speedup"] for r in rows] == [1.0, pytest.approx(200 / 110, abs=1e-4), pytest.approx(3.0)]
    assert [r["efficiency"] for r in rows] == [1.0, pytest.approx(200 / 220, abs=1e-4), pytest.approx(0.75)]
    assert rows[0]["runs"] == ["r1-100", "r1-120"]


def test_scaling_against_the_smallest_count_when_one_node_is_missing() -> None:
    rows = scaling_rows([summary(2, 200), summary(4, 360)])
    assert (rows[1]["speedup"], rows[1]["efficiency"]) == (1.8, 0.9)
    assert "against 2 node(s)" in markdown(rows, "job")


@pytest.mark.parametrize(
    "other, message",
    [
        (summary(2, 150, job="other"), "b: job 'other' differs from a: job 'job'; only runs of one job can be compared"),
        (summary(2, 150, batch=64), "b: 64 samples per step per rank differs from a: 32; scaling compares runs at the same per-rank batch"),
        (summary(2, None), "b: has no throughput (status succeeded, metrics missing); it cannot be compared"),
    ],
)
def test_runs_that_cannot_be_compared_are_refused(other: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        check_comparable({"a": summary(1, 100), "b": other})
    assert str(info.value) == message


def test_written_files_agree_and_the_plot_is_a_real_picture(tmp_path: Path) -> None:
    rows = write_scaling(tmp_path, {"a": summary(1, 100), "b": summary(2, 180), "c": summary(3, 240)})
    assert json.loads((tmp_path / "scaling.json").read_text()) == rows
    md = (tmp_path / "scaling.md").read_text()
    assert "| 2 | 4 | 180.0 | 1.80 | 90.0% |" in md and "| 3 | 6 | 240.0 | 2.40 | 80.0% |" in md
    image = matplotlib.image.imread(tmp_path / "scaling.png")
    assert image.shape[:2] == (400, 1000)
    rgb = image[..., :3]
    assert rgb.std() > 0.05, "not blank"
    orange = ((rgb[..., 0] > 0.9) & (rgb[..., 1] > 0.4) & (rgb[..., 1] < 0.6) & (rgb[..., 2] < 0.2)).sum()
    blue = ((rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.3)).sum()
    assert orange > 100 and blue > 100, "both measured lines are drawn"
