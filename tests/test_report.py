"""`launch report`: scaling rows per node count and world size, the warm-up sentence of the summary,
and the picture of a run (steps.png), from summaries and run directories built here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.image
import pytest
from rich.console import Console

from launcher import cli
from launcher.results.runplot import downsample, picture_of, prepare, write_steps_plot
from launcher.results.scaling import markdown, scaling_rows, write_scaling
from launcher.results.stats import StepRecord
from launcher.results.summary import render


def summary(nodes: int, world_size: int, throughput: float | None, wall: float = 10.0, run: str = "") -> dict:
    return {"run_id": run or f"r{nodes}x{world_size}-{throughput}", "job": "job", "nodes": nodes, "world_size": world_size,
            "throughput_samples_per_s": throughput, "wall_time_s": wall, "samples_per_step_per_rank": 32,
            "status": "succeeded"}


# --- scaling: a row per (nodes, world size) -------------------------------------------------------------------------

def test_world_sizes_at_one_node_count_are_not_merged() -> None:
    rows = scaling_rows([summary(1, 8, 30278), summary(1, 1, 3131)])
    assert [(r["nodes"], r["world_size"], r["throughput_samples_per_s"]) for r in rows] == [(1, 1, 3131), (1, 8, 30278)]
    assert [(r["speedup"], r["efficiency"]) for r in rows] == [(1.0, 1.0), (1.0, 1.0)]  # each its own baseline


def test_each_row_against_the_smallest_node_count_at_its_processes_per_node() -> None:
    rows = scaling_rows([summary(1, 4, 100), summary(2, 8, 180), summary(1, 8, 300), summary(2, 16, 500),
                         summary(2, 16, 540), summary(4, 16, 320)])
    got = {(r["nodes"], r["world_size"]): (r["throughput_samples_per_s"], r["speedup"], r["efficiency"]) for r in rows}
    assert list(got) == [(1, 4), (1, 8), (2, 8), (2, 16), (4, 16)]
    assert got[(2, 8)] == (180, 1.8, 0.9)  # against 1 x 4
    assert got[(2, 16)] == (520, pytest.approx(520 / 300, rel=1e-5), pytest.approx(520 / 600, rel=1e-5))  # the median, against 1 x 8
    assert got[(4, 16)] == (320, 3.2, 0.8)  # 4 per node: against 1 x 4, not against 2 x 16
    assert rows[3]["runs"] == ["r2x16-500", "r2x16-540"]


def test_wall_time_rows_compare_like_with_like_too() -> None:
    rows = scaling_rows([summary(1, 2, None, wall=100), summary(2, 4, None, wall=60), summary(2, 8, None, wall=40),
                         summary(4, 16, None, wall=25)])
    got = {(r["nodes"], r["world_size"]): (r["speedup"], r["efficiency"]) for r in rows}
    assert got[(2, 4)] == (pytest.approx(100 / 60, rel=1e-5), pytest.approx(100 / 120, rel=1e-5))
    assert got[(2, 8)] == (1.0, 1.0)
    assert got[(4, 16)] == (1.6, 0.8)  # against 2 x 8: 40 / 25, over twice the ranks


def test_the_table_says_which_node_counts_have_several_world_sizes_and_each_rows_baseline(tmp_path: Path) -> None:
    runs = {"a": summary(1, 4, 100), "b": summary(2, 8, 180), "c": summary(2, 16, 600), "d": summary(1, 8, 320)}
    rows = write_scaling(tmp_path, runs)
    text = (tmp_path / "scaling.md").read_text()
    assert "Runs at 1 node have world sizes 4 and 8; runs at 2 nodes have world sizes 8 and 16: one row each." in text
    assert "| 2 | 8 | 180.0 | 1.80 | 90.0% | 1 node, world size 4 |" in text
    assert "| 2 | 16 | 600.0 | 1.88 | 93.8% | 1 node, world size 8 |" in text
    assert "each row against the smallest node count with as many processes per node" in text
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved == rows and len(saved) == 4
    assert set(saved[0]) == {"nodes", "world_size", "throughput_samples_per_s", "wall_time_s", "speedup", "efficiency",
                             "runs", "basis"}
    image = matplotlib.image.imread(tmp_path / "scaling.png")
    assert image.shape[:2] == (400, 1000) and image[..., :3].std() > 0.05


def test_one_world_size_per_node_count_keeps_the_plain_table() -> None:
    text = markdown(scaling_rows([summary(1, 2, 100), summary(2, 4, 190)]), "job")
    assert "one row each" not in text and "against |" not in text
    assert "| 2 | 4 | 190.0 | 1.90 | 95.0% |\n" in text and "against 1 node(s)" in text


# --- the warm-up sentence of the summary ----------------------------------------------------------------------------

def rendered(warmup: int, excluded: dict[int, int | None]) -> str:
    """The printed summary of a run whose ranks left out `excluded` steps (None: the rank has no step records)."""
    ranks = [{"rank": rank, "host": "h", "exit_code": 0, "wall_time_s": 1.0, "steps": 5,
              "warmup_steps_excluded": n or 0, "samples_per_s": None if n is None else 10.0,
              "step_time_median_s": None if n is None else 0.1, "step_time_p95_s": None if n is None else 0.1,
              "metrics_source": None if n is None else "job"} for rank, n in excluded.items()]
    data = {"run_id": "r", "status": "succeeded", "nodes": 1, "world_size": len(ranks), "backend": "gloo",
            "wall_time_s": 1.0, "throughput_samples_per_s": 20.0, "warmup_steps": warmup, "straggler_threshold": 1.25,
            "stragglers": {"ranks": [], "hosts": []}, "metrics_missing": [r for r, n in excluded.items() if n is None],
            "ranks": ranks}
    out = io.StringIO()
    render(data, Console(file=out, width=300, color_system=None))
    return out.getvalue()


def test_warm_up_left_out_of_every_rank() -> None:
    assert "step times leave out each rank's first 3 steps (warm-up)\n" in rendered(3, {0: 3, 1: 3})


def test_no_warm_up_left_out_when_every_rank_was_short() -> None:
    text = rendered(3, {0: 0, 1: 0, 2: None})
    assert "no warm-up steps left out: every rank had 3 steps or fewer, so all of them count\n" in text
    assert "leave out each rank" not in text


def test_warm_up_left_out_of_some_ranks_only() -> None:
    text = rendered(1, {0: 1, 1: 1, 2: 1, 3: 0, 4: 1, 5: 0})
    assert ("step times leave out the first 1 step of ranks 0-2, 4 (warm-up); none of ranks 3, 5: they had 1 step or "
            "fewer\n") in text


def test_no_warm_up_asked_for() -> None:
    assert "step times count every step (warmup_steps: 0)\n" in rendered(0, {0: 0})


# --- the picture of a run -------------------------------------------------------------------------------------------

def test_downsampling_keeps_few_points_and_the_slow_step() -> None:
    x = list(range(100_000))
    y = [0.1] * 100_000
    y[54_321] = 3.0
    line = downsample(x, y, max_points=2000)
    assert len(line.x) <= 2000 and line.x == sorted(line.x)
    assert 3.0 in line.y and line.x[line.y.index(3.0)] == 54_321
    assert downsample([0, 1, 2], [0.3, 0.2, 0.1], 2000).y == [0.3, 0.2, 0.1]  # short lines as they are


def records(times: list[float], samples: float = 8.0) -> list[StepRecord]:
    return [StepRecord(i, samples, t) for i, t in enumerate(times)]


def test_prepare_marks_stragglers_the_warm_up_and_adds_ranks_throughput() -> None:
    picture = prepare({0: records([2.0, 0.1, 0.1]), 1: records([2.0, 0.2, 0.4]), 2: []}, {0: "a", 1: "b", 2: "b"},
                      straggler_ranks=[1], warmup_excluded={0: 1, 1: 1, 2: 0}, max_points=2000)
    assert [(r.rank, r.host, r.straggler) for r in picture.ranks] == [(0, "a", False), (1, "b", True)]  # 2 has no steps
    assert picture.ranks[1].line.x == [0, 1, 2] and picture.ranks[1].line.y == [2.0, 0.2, 0.4]
    assert (picture.warmup, picture.steady_max_s, picture.warmup_max_s) == (1, 0.4, 2.0)
    assert picture.throughput.y == pytest.approx([8.0, 80 + 40, 80 + 20])
    assert prepare({0: []}, {}, [], {}) is None


def test_prepare_thins_every_rank() -> None:
    picture = prepare({r: records([0.1] * 10_000) for r in range(3)}, {}, [], {}, max_points=500)
    assert all(len(r.line.x) <= 500 for r in picture.ranks) and len(picture.throughput.x) <= 500


def fake_run(root: Path, source: str = "job", steps: int = 50) -> tuple[Path, dict]:
    """A run of 4 ranks on 2 hosts, rank 3 slow; its records in the files `source` names."""
    run = root / "job-20250101-000000-abcd"
    (run / "metrics").mkdir(parents=True)
    suffix = ".jsonl" if source == "job" else ".auto.jsonl"
    ranks = []
    for rank in range(4):
        times = [1.0, 0.5] + [0.1 * (1.6 if rank == 3 else 1.0) + 0.001 * (i % 7) for i in range(steps - 2)]
        (run / "metrics" / f"rank{rank}{suffix}").write_text(
            "".join(json.dumps({"step": i, "samples": 16, "step_time_s": t}) + "\n" for i, t in enumerate(times)))
        ranks.append({"rank": rank, "host": "a" if rank < 2 else "b", "steps": steps - 2, "warmup_steps_excluded": 2,
                      "samples_per_s": 150.0, "metrics_source": source})
    data = {"run_id": run.name, "job": "job", "status": "succeeded", "nodes": 2, "world_size": 4, "warmup_steps": 2,
            "throughput_samples_per_s": 580.0, "samples_per_step_per_rank": 16, "wall_time_s": 9.0,
            "stragglers": {"ranks": [3], "hosts": ["b"]}, "ranks": ranks}
    (run / "summary.json").write_text(json.dumps(data))
    return run, data


def test_the_picture_reads_the_files_the_summary_names(tmp_path: Path) -> None:
    run, data = fake_run(tmp_path, source="auto")
    (run / "metrics" / "rank0.jsonl").write_text(json.dumps({"step": 0, "samples": 1, "step_time_s": 9.0}) + "\n")
    picture = picture_of(run, data)
    assert [len(r.line.x) for r in picture.ranks] == [50, 50, 50, 50]  # the .auto files, not the stray rank0.jsonl
    assert [r.rank for r in picture.ranks if r.straggler] == [3]


def test_report_of_one_run_draws_its_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, _ = fake_run(tmp_path)
    assert cli.main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["launch: one run: no scaling table (it compares two runs or more)",
                                f"launch: steps of run {run.name}: {run / 'steps.png'}"]
    assert (run / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(run / "steps.png")
    assert image.shape[:2] == (700, 1000)
    rgb = image[..., :3]
    assert rgb.std() > 0.05, "not blank"
    red = ((rgb[..., 0] > 0.75) & (rgb[..., 1] < 0.25) & (rgb[..., 2] < 0.25)).sum()
    assert red > 300, "the straggler's line is drawn in red"
    assert not (tmp_path / "scaling.json").exists()


def test_report_of_several_runs_puts_each_picture_in_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    one, _ = fake_run(tmp_path / "one")
    two, data = fake_run(tmp_path / "two")
    data.update(run_id="job-2", nodes=4, world_size=8)
    (two / "summary.json").write_text(json.dumps(data))
    assert cli.main(["report", str(one), str(two), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"launch: steps of run job-2: {tmp_path / 'out' / 'job-2-steps.png'}" in out
    assert (tmp_path / "out" / f"{one.name}-steps.png").is_file() and (tmp_path / "out" / "scaling.json").is_file()
    assert not (one / "steps.png").exists()


def test_a_run_without_step_metrics_gets_no_picture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, data = fake_run(tmp_path)
    for r in data["ranks"]:
        r.update(metrics_source=None, samples_per_s=None)
    (run / "summary.json").write_text(json.dumps(data))
    assert write_steps_plot(run, data, run / "steps.png") is False and not (run / "steps.png").exists()
    assert cli.main(["report", str(run)]) == 0
    assert f"launch: run {run.name} has no step metrics: no steps.png made" in capsys.readouterr().out
