"""Scaling across node counts: speedup and efficiency from run summaries, as JSON, Markdown and a plot.

Two bases, one per comparison (`Basis`):
- throughput (the runs have step metrics, the job's own or launch's): weak scaling at a fixed
  per-rank batch. With throughput T(N) at N nodes and the smallest node count N0 as the baseline,
  speedup(N) = T(N) / T(N0) and efficiency(N) = T(N) / ((N / N0) x T(N0)).
- wall time (no run has step metrics): strong scaling, the same whole job on more nodes:
  speedup(N) = wall(N0) / wall(N) and efficiency(N) = speedup(N) / (N / N0).
Several runs at one node count and world size count by their median. Runs at one node count with
different world sizes (another nproc_per_node) are not merged: each (nodes, world size) is a row, and
a row compares only with rows of as many processes per node (a series), against the series' smallest
node count; efficiency is relative to world size: speedup / (W / W0), the same as N / N0 within a series.
Runs with and without throughput are not compared: a run without is most often one whose metrics went
missing, not a job without any.
"""

from __future__ import annotations

import enum
import json
import statistics
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import SpecError

FILES = ("scaling.json", "scaling.md", "scaling.png")


class Basis(str, enum.Enum):
    """What a scaling table compares (scaling.json's `basis`)."""

    THROUGHPUT = "throughput"  # weak scaling at a fixed per-rank batch, from step metrics
    WALL_TIME = "wall_time"  # strong scaling from wall time: the runs reported no step metrics


def basis_of(summaries: list[dict[str, Any]]) -> Basis:
    """Throughput when every run has it, else wall time."""
    has = all(s.get("throughput_samples_per_s") is not None for s in summaries)
    return Basis.THROUGHPUT if has else Basis.WALL_TIME


def check_comparable(summaries: dict[str, dict[str, Any]]) -> Basis:
    """The basis to compare the runs on; SpecError for runs of different jobs or per-rank batches,
    runs with and without throughput, or, from wall time, a run that did not succeed."""
    first_label, first = next(iter(summaries.items()))
    unmeasured = [label for label, s in summaries.items() if s.get("throughput_samples_per_s") is None]
    if unmeasured and len(unmeasured) < len(summaries):
        label = unmeasured[0]
        raise SpecError(f"{label}: has no throughput (status {summaries[label].get('status')}, metrics missing); "
                        "it cannot be compared")
    basis = basis_of(list(summaries.values()))
    for label, summary in summaries.items():
        if basis is Basis.WALL_TIME and (summary.get("status") != "succeeded" or summary.get("wall_time_s") is None):
            raise SpecError(f"{label}: status {summary.get('status')}; scaling from wall time (no run has step metrics) "
                            "compares only runs that succeeded")
        if summary.get("job") != first.get("job"):
            raise SpecError(f"{label}: job '{summary.get('job')}' differs from {first_label}: job '{first.get('job')}'; "
                            "only runs of one job can be compared")
        if summary.get("samples_per_step_per_rank") != first.get("samples_per_step_per_rank"):
            raise SpecError(
                f"{label}: {summary.get('samples_per_step_per_rank')} samples per step per rank differs from {first_label}: "
                f"{first.get('samples_per_step_per_rank')}; scaling compares runs at the same per-rank batch"
            )
    return basis


STANDS_FOR_NODES = "stands_for_nodes"  # summary.json of a `--sweep --local` run: the node count it ran as one box
Key = tuple[int, int]  # (nodes, world size): one row of a scaling table


def scaling_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (node count, world size), ascending: `{nodes, world_size, throughput_samples_per_s,
    wall_time_s, speedup, efficiency, runs, basis}`; throughput is None on the wall-time basis.
    Speedup and efficiency are against the row's baseline (`baselines`)."""
    basis = basis_of(summaries)
    groups: dict[Key, list[dict[str, Any]]] = {}
    for summary in summaries:
        nodes = summary.get(STANDS_FOR_NODES) or summary["nodes"]
        groups.setdefault((int(nodes), int(summary["world_size"])), []).append(summary)
    keys = sorted(groups)
    throughput = {k: _median(s.get("throughput_samples_per_s") for s in groups[k]) for k in keys}
    wall = {k: _median(s.get("wall_time_s") for s in groups[k]) for k in keys}
    # how fast each row gets through its work: samples per second, or whole jobs per second
    rate = throughput if basis is Basis.THROUGHPUT else {k: 1 / wall[k] if wall[k] else 0.0 for k in keys}
    base = baselines(keys)
    rows = []
    for key in keys:
        speedup = rate[key] / rate[base[key]] if rate[base[key]] else 0.0
        rows.append({
            "nodes": key[0],
            "world_size": key[1],
            "throughput_samples_per_s": _rounded(throughput[key], 3),
            "wall_time_s": _rounded(wall[key], 3),
            "speedup": _significant(speedup),
            "efficiency": _significant(speedup / _size_ratio(key, base[key])),
            "runs": sorted(s["run_id"] for s in groups[key]),
            "basis": basis.value,
        })
    return rows


def per_node(key: Key) -> Fraction:
    """Processes per node of a (nodes, world size) row: rows with as many compare with each other."""
    nodes, world_size = key
    return Fraction(world_size, nodes) if nodes else Fraction(world_size)


def baselines(keys: list[Key]) -> dict[Key, Key]:
    """Each row's baseline: the row of the smallest node count with as many processes per node, so a
    row is never compared with runs that packed more or fewer ranks into each node."""
    first: dict[Fraction, Key] = {}
    for key in sorted(keys):
        first.setdefault(per_node(key), key)
    return {key: first[per_node(key)] for key in keys}


def _size_ratio(key: Key, base: Key) -> float:
    """How many times the baseline's ranks (its nodes, for runs of no ranks) a row has."""
    return key[1] / base[1] if base[1] else key[0] / base[0]


def mixed_world_sizes(rows: list[dict[str, Any]]) -> str | None:
    """The one line that says which node counts have rows of several world sizes, or None."""
    sizes: dict[int, list[int]] = {}
    for r in rows:
        sizes.setdefault(r["nodes"], []).append(r["world_size"])
    parts = [f"runs at {_nodes(n)} have world sizes {_and(sorted(w))}" for n, w in sorted(sizes.items()) if len(w) > 1]
    return "; ".join(parts) + ": one row each" if parts else None


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def _and(values: list[int]) -> str:
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " and " + text[-1]


def _median(values) -> float | None:
    """The median, or None when any value is missing."""
    values = list(values)
    return None if any(v is None for v in values) else statistics.median(values)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _significant(value: float, digits: int = 6) -> float:
    """Rounded to significant digits, so that small efficiencies keep their precision."""
    return float(f"{value:.{digits}g}")


def markdown(rows: list[dict[str, Any]], job: str) -> str:
    """scaling.md: the table, which rows compare with which, and how the numbers were worked out."""
    base = baselines([(r["nodes"], r["world_size"]) for r in rows])
    several = len(set(base.values())) > 1  # series of different processes per node
    n0 = rows[0]["nodes"]
    if rows[0]["basis"] == Basis.THROUGHPUT.value:
        column, key, spec = "throughput (samples/s)", "throughput_samples_per_s", ".1f"
        how = (f"Weak scaling at a fixed per-rank batch: speedup and efficiency against {n0} node(s); "
               f"efficiency = throughput_N / ((N / {n0}) x throughput_{n0}).")
        if several:
            how = ("Weak scaling at a fixed per-rank batch: each row against the smallest node count with as many "
                   "processes per node (column 'against'); efficiency = throughput / ((world size / its world size) "
                   "x its throughput).")
    else:
        column, key, spec = "wall time (s)", "wall_time_s", ".2f"
        how = (f"Strong scaling from wall time (the runs have no step metrics): speedup and efficiency against "
               f"{n0} node(s); speedup = wall_{n0} / wall_N, efficiency = speedup / (N / {n0}).")
        if several:
            how = ("Strong scaling from wall time (the runs have no step metrics): each row against the smallest node "
                   "count with as many processes per node (column 'against'); speedup = its wall time / wall time, "
                   "efficiency = speedup / (world size / its world size).")
    header = f"| nodes | world size | {column} | speedup | efficiency |" + (" against |" if several else "")
    lines = [f"# Scaling of {job}", ""]
    mixed = mixed_world_sizes(rows)
    if mixed:
        lines += [mixed[0].upper() + mixed[1:] + ".", ""]
    lines += [header, "|---:|---:|---:|---:|---:|" + ("---|" if several else "")]
    for r in rows:
        line = f"| {r['nodes']} | {r['world_size']} | {r[key]:{spec}} | {r['speedup']:.2f} | {r['efficiency']:.1%} |"
        if several:
            n, w = base[(r["nodes"], r["world_size"])]
            line += f" {_nodes(n)}, world size {w} |"
        lines.append(line)
    lines += ["", how]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], job: str, path: Path) -> None:
    """Throughput (or wall time) and efficiency against node count, each with its ideal line; one
    line of each per series of as many processes per node."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput = rows[0]["basis"] == Basis.THROUGHPUT.value
    if throughput:
        title, ylabel, kind = "Throughput", "samples/s", "weak scaling at a fixed per-rank batch"
    else:
        title, ylabel, kind = "Wall time", "s", "strong scaling from wall time"
    series: dict[Fraction, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(per_node((r["nodes"], r["world_size"])), []).append(r)
    several = len(series) > 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for i, (procs, members) in enumerate(sorted(series.items())):
        nodes = [r["nodes"] for r in members]
        ratio = [_size_ratio((r["nodes"], r["world_size"]), (members[0]["nodes"], members[0]["world_size"])) for r in members]
        if throughput:
            measured = [r["throughput_samples_per_s"] for r in members]
            ideal = [measured[0] * x for x in ratio]  # linear in the ranks
        else:
            measured = [r["wall_time_s"] for r in members]
            ideal = [measured[0] / x for x in ratio]  # 1/N
        colour = f"C{i}" if several else None
        name = f"{procs} ranks/node: " if several else ""
        left.plot(nodes, ideal, "--", color=colour or "gray", alpha=0.6 if several else 1.0, label=f"{name}ideal")
        left.plot(nodes, measured, "o-", color=colour or "tab:blue", label=f"{name}measured")
        right.plot(nodes, [1.0] * len(nodes), "--", color="gray", label=None if i else "ideal")
        right.plot(nodes, [r["efficiency"] for r in members], "o-", color=colour or "tab:orange", label=f"{name}measured")
    ticks = sorted({r["nodes"] for r in rows})
    left.set(title=title, xlabel="nodes", ylabel=ylabel, xticks=ticks)
    left.set_ylim(bottom=0)
    left.legend(fontsize="small" if several else None)
    right.set(title="Scaling efficiency", xlabel="nodes", ylabel="efficiency", xticks=ticks)
    right.set_ylim(0, max(1.1, max(r["efficiency"] for r in rows) * 1.1))
    right.legend(fontsize="small" if several else None)
    fig.suptitle(f"{job}: {kind}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_scaling(directory: Path, summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the runs, then write scaling.json, scaling.md and scaling.png into `directory`."""
    check_comparable(summaries)
    job = next(iter(summaries.values()))["job"]
    rows = scaling_rows(list(summaries.values()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scaling.json").write_text(json.dumps(rows, indent=2) + "\n")
    (directory / "scaling.md").write_text(markdown(rows, job))
    plot(rows, job, directory / "scaling.png")
    return rows


def load_summaries(runs: list[Path]) -> dict[str, dict[str, Any]]:
    """summary.json of every run directory, by the path as given; SpecError naming a bad one."""
    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        path = run / "summary.json"
        try:
            found[str(run)] = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{run}: no summary.json; expected a run directory") from None
        except (OSError, ValueError) as exc:
            raise SpecError(f"{run}: summary.json cannot be read: {exc}") from None
        if not isinstance(found[str(run)], dict):
            raise SpecError(f"{run}: summary.json is not a run's summary")
        status = found[str(run)].get("status")
        if status != "succeeded":
            raise SpecError(f"{run}: the run {status or 'did not end'}; only runs that succeeded are compared "
                            "(a failed or stopped run's throughput says nothing about scaling)")
    return found
