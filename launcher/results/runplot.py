"""A picture of one run: steps.png, every rank's step time over the run, and the throughput of all
ranks together, from the run's step records (the job's or launch's, as summary.json says per rank).

`prepare` turns records into what is drawn (pure: downsampled lines, stragglers marked, the warm-up
to shade); `write_steps_plot` reads a run directory and draws it with matplotlib (Agg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stats import MetricsSource, StepRecord, pick_source, read_records
from ..record.rundir import RunPaths

MAX_POINTS = 2000  # per line: enough for a 1000-pixel-wide panel, cheap for runs of a million steps
MANY_RANKS = 8  # above this, ranks that are not stragglers are drawn alike, without a legend entry each
FILE = "steps.png"


@dataclass(frozen=True)
class Line:
    """Points of one line: x is the step (the n-th step record, from 0), y a step time or samples/s."""

    x: list[int]
    y: list[float]


@dataclass(frozen=True)
class RankLine:
    rank: int
    host: str
    line: Line
    straggler: bool


@dataclass(frozen=True)
class StepsPicture:
    """What steps.png draws."""

    ranks: list[RankLine]  # by rank
    warmup: int  # steps shaded as warm-up: the most any rank left out of its numbers
    steady_max_s: float | None  # the slowest step after warm-up (the y axis stops above it), None when none
    warmup_max_s: float  # the slowest warm-up step
    throughput: Line  # samples/s over all ranks at each step


def downsample(x: list[int], y: list[float], max_points: int = MAX_POINTS) -> Line:
    """At most `max_points` points (at least 2): the lowest and the highest point of each of equal
    buckets, in step order, so that a single slow step still shows after thinning."""
    if len(x) <= max_points:
        return Line(list(x), list(y))
    buckets = max(1, max_points // 2)
    size = math.ceil(len(x) / buckets)
    out_x: list[int] = []
    out_y: list[float] = []
    for start in range(0, len(x), size):
        end = min(start + size, len(x))
        low = min(range(start, end), key=y.__getitem__)
        high = max(range(start, end), key=y.__getitem__)
        for i in sorted({low, high}):
            out_x.append(x[i])
            out_y.append(y[i])
    return Line(out_x, out_y)


def prepare(records: dict[int, list[StepRecord]], hosts: dict[int, str], straggler_ranks: list[int],
            warmup_excluded: dict[int, int], max_points: int = MAX_POINTS) -> StepsPicture | None:
    """The picture of a run's step records by rank, or None when no rank has any. A rank's
    `warmup_excluded` first steps are its warm-up (shaded, and left out of the y range's top)."""
    measured = {rank: recs for rank, recs in sorted(records.items()) if recs}
    if not measured:
        return None
    lines = []
    steady: list[float] = []
    warm: list[float] = []
    for rank, recs in measured.items():
        times = [r.step_time_s for r in recs]
        skip = warmup_excluded.get(rank, 0)
        warm += times[:skip]
        steady += times[skip:]
        lines.append(RankLine(rank, hosts.get(rank, "?"), downsample(list(range(len(times))), times, max_points),
                              rank in straggler_ranks))
    return StepsPicture(
        ranks=lines,
        warmup=max((warmup_excluded.get(rank, 0) for rank in measured), default=0),
        steady_max_s=max(steady) if steady else None,
        warmup_max_s=max(warm, default=0.0),
        throughput=downsample(*_throughput(measured.values()), max_points),
    )


def _throughput(ranks) -> tuple[list[int], list[float]]:
    """Samples/s of all ranks at each step: the sum of each rank's samples / step time there (the
    summary adds ranks' throughputs the same way)."""
    total: list[float] = []
    for recs in ranks:
        if len(recs) > len(total):
            total += [0.0] * (len(recs) - len(total))
        for i, r in enumerate(recs):
            total[i] += r.samples / r.step_time_s
    return list(range(len(total))), total


def run_records(run_dir: Path, summary: dict[str, Any]) -> dict[int, list[StepRecord]]:
    """Each rank's step records, from the file summary.json's `metrics_source` names for it (for a
    summary without it, the run's one source picked as the summary does)."""
    paths = RunPaths(run_dir)
    ranks = [r for r in summary.get("ranks") or [] if isinstance(r, dict) and isinstance(r.get("rank"), int)]
    if ranks and all("metrics_source" not in r for r in ranks):
        numbers = [r["rank"] for r in ranks]
        return pick_source({n: read_records(paths.metrics_file(n)) for n in numbers},
                           {n: read_records(paths.auto_metrics_file(n)) for n in numbers})[1]
    files = {MetricsSource.JOB.value: paths.metrics_file, MetricsSource.AUTO.value: paths.auto_metrics_file}
    return {r["rank"]: read_records(files[r["metrics_source"]](r["rank"])) for r in ranks if r.get("metrics_source") in files}


def picture_of(run_dir: Path, summary: dict[str, Any], max_points: int = MAX_POINTS) -> StepsPicture | None:
    """The picture of a run directory, or None when it has no step records."""
    ranks = [r for r in summary.get("ranks") or [] if isinstance(r, dict) and isinstance(r.get("rank"), int)]
    warmup = int(summary.get("warmup_steps") or 0)
    records = run_records(run_dir, summary)
    excluded = {r["rank"]: _excluded(r, len(records.get(r["rank"], [])), warmup) for r in ranks}
    return prepare(records, {r["rank"]: str(r.get("host")) for r in ranks},
                   list((summary.get("stragglers") or {}).get("ranks") or []), excluded, max_points)


def _excluded(rank: dict[str, Any], steps: int, warmup: int) -> int:
    """The steps the summary left out of a rank's numbers; as rank_stats does, for a summary without."""
    value = rank.get("warmup_steps_excluded")
    if isinstance(value, int) and value >= 0:
        return value
    return warmup if steps > warmup else 0


def plot_path(run_dir: Path, summary: dict[str, Any], out: Path | None) -> Path:
    """Where a run's picture goes: steps.png in the run directory, or OUT/<run id>-steps.png."""
    return run_dir / FILE if out is None else out / f"{summary.get('run_id') or run_dir.name}-{FILE}"


def write_steps_plot(run_dir: Path, summary: dict[str, Any], path: Path) -> bool:
    """Draw the run's steps.png at `path`; False, and nothing written, when it has no step records."""
    picture = picture_of(run_dir, summary)
    if picture is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(picture, _title(summary), path, summary.get("throughput_samples_per_s"))
    return True


def _title(summary: dict[str, Any]) -> str:
    hosts = (summary.get("stragglers") or {}).get("hosts") or []
    text = (f"{summary.get('run_id')}: {summary.get('nodes')} node(s), world size {summary.get('world_size')}, "
            f"{summary.get('status')}")
    return text + (f"; straggling host(s): {', '.join(hosts)}" if hosts else "")


def draw(picture: StepsPicture, title: str, path: Path, steady_throughput: float | None = None) -> None:
    """Step time per rank above, throughput of all ranks below (with the summary's, after warm-up,
    when given), one step axis; stragglers in red and named, the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), dpi=100, sharex=True, height_ratios=(3, 2))
    others = [r for r in picture.ranks if not r.straggler]
    if len(others) > MANY_RANKS:  # one collection: cheap to draw, and a legend of one entry
        top.add_collection(LineCollection([list(zip(r.line.x, r.line.y)) for r in others], colors="tab:blue",
                                          linewidths=0.8, alpha=0.35, label=f"{len(others)} other ranks"))
    else:
        palette = [c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if c != "#d62728"]  # red is for stragglers
        for i, r in enumerate(others):
            top.plot(r.line.x, r.line.y, color=palette[i % len(palette)], linewidth=1, marker=_marker(r.line),
                     label=f"rank {r.rank} ({r.host})")
    for r in picture.ranks:
        if r.straggler:
            top.plot(r.line.x, r.line.y, color="#d62728", linewidth=2, marker=_marker(r.line),
                     label=f"rank {r.rank} ({r.host}): straggler")
    top.autoscale_view()
    _warmup(top, picture)
    top.set(title="Step time per rank", ylabel="step time (s)")
    top.legend(loc="upper right", fontsize="small", ncol=2 if len(picture.ranks) > 4 else 1)
    bottom.plot(picture.throughput.x, picture.throughput.y, color="black", linewidth=0.8,
                marker=_marker(picture.throughput), label="per step")
    if steady_throughput is not None:
        left_out = ", after warm-up" if picture.warmup else ""
        bottom.axhline(steady_throughput, color="gray", linestyle="--", linewidth=1,
                       label=f"the run's throughput{left_out}: {steady_throughput:,.1f} samples/s")
        bottom.legend(loc="lower right", fontsize="small")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set(title="Throughput of all ranks", xlabel="step", ylabel="samples/s")
    bottom.set_ylim(bottom=0)
    if picture.warmup:
        bottom.axvspan(-0.5, picture.warmup - 0.5, color="gray", alpha=0.15)
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _marker(line: Line) -> str | None:
    """Dots on a short line, where each step can be told apart."""
    return "." if len(line.x) <= 100 else None


def _warmup(axes, picture: StepsPicture) -> None:
    """Shade the warm-up, and keep a slow first step from flattening the steps after it; the top
    third of the y range stays free for the legend."""
    top = picture.steady_max_s
    if picture.warmup:
        axes.axvspan(-0.5, picture.warmup - 0.5, color="gray", alpha=0.15, label="warm-up (left out)")
    if top is not None and picture.warmup_max_s > 1.15 * top:
        axes.set_ylim(0, top * 1.4)
        axes.text(0.01, 0.97, f"warm-up steps up to {picture.warmup_max_s:.3g} s, off the scale",
                  transform=axes.transAxes, va="top", fontsize="small", color="dimgray",
                  bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    else:
        axes.set_ylim(0, max(picture.warmup_max_s, top or 0.0) * 1.4 or None)
