"""Scaling across node counts: speedup and efficiency from run summaries, as JSON, Markdown and a plot.

Two bases, one per comparison (`Basis`):
- throughput (the runs have step metrics, the job's own or launch's): weak scaling at a fixed
  per-rank batch. With throughput T(N) at N nodes and the smallest node count N0 as the baseline,
  speedup(N) = T(N) / T(N0) and efficiency(N) = T(N) / ((N / N0) x T(N0)).
- wall time (no run has step metrics): strong scaling, the same whole job on more nodes:
  speedup(N) = wall(N0) / wall(N) and efficiency(N) = speedup(N) / (N / N0).
Several runs at one node count count by their median. Runs with and without throughput are not
compared: a run without is most often one whose metrics went missing, not a job without any.
"""

from __future__ import annotations

import enum
import json
import statistics
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


def scaling_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per node count, ascending: `{nodes, world_size, throughput_samples_per_s, wall_time_s,
    speedup, efficiency, runs, basis}`; throughput is None on the wall-time basis."""
    basis = basis_of(summaries)
    by_nodes: dict[int, list[dict[str, Any]]] = {}
    for summary in summaries:
        by_nodes.setdefault(int(summary["nodes"]), []).append(summary)
    counts = sorted(by_nodes)
    throughput = {n: _median(s.get("throughput_samples_per_s") for s in by_nodes[n]) for n in counts}
    wall = {n: _median(s.get("wall_time_s") for s in by_nodes[n]) for n in counts}
    # how fast each count gets through its work: samples per second, or whole jobs per second
    rate = throughput if basis is Basis.THROUGHPUT else {n: 1 / wall[n] if wall[n] else 0.0 for n in counts}
    base_n = counts[0]
    rows = []
    for n in counts:
        speedup = rate[n] / rate[base_n] if rate[base_n] else 0.0
        rows.append({
            "nodes": n,
            "world_size": max(int(s["world_size"]) for s in by_nodes[n]),
            "throughput_samples_per_s": _rounded(throughput[n], 3),
            "wall_time_s": _rounded(wall[n], 3),
            "speedup": _significant(speedup),
            "efficiency": _significant(speedup / (n / base_n)),
            "runs": sorted(s["run_id"] for s in by_nodes[n]),
            "basis": basis.value,
        })
    return rows


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
    base = rows[0]["nodes"]
    if rows[0]["basis"] == Basis.THROUGHPUT.value:
        column, key, spec = "throughput (samples/s)", "throughput_samples_per_s", ".1f"
        how = (f"Weak scaling at a fixed per-rank batch: speedup and efficiency against {base} node(s); "
               f"efficiency = throughput_N / ((N / {base}) x throughput_{base}).")
    else:
        column, key, spec = "wall time (s)", "wall_time_s", ".2f"
        how = (f"Strong scaling from wall time (the runs have no step metrics): speedup and efficiency against "
               f"{base} node(s); speedup = wall_{base} / wall_N, efficiency = speedup / (N / {base}).")
    lines = [
        f"# Scaling of {job}",
        "",
        f"| nodes | world size | {column} | speedup | efficiency |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['nodes']} | {r['world_size']} | {r[key]:{spec}} | {r['speedup']:.2f} | {r['efficiency']:.1%} |")
    lines += ["", how]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], job: str, path: Path) -> None:
    """Throughput (or wall time) and efficiency against node count, each with its ideal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = [r["nodes"] for r in rows]
    base_n = rows[0]["nodes"]
    if rows[0]["basis"] == Basis.THROUGHPUT.value:
        measured = [r["throughput_samples_per_s"] for r in rows]
        ideal = [measured[0] * n / base_n for n in nodes]  # linear in N
        title, ylabel, kind = "Throughput", "samples/s", "weak scaling at a fixed per-rank batch"
    else:
        measured = [r["wall_time_s"] for r in rows]
        ideal = [measured[0] * base_n / n for n in nodes]  # 1/N
        title, ylabel, kind = "Wall time", "s", "strong scaling from wall time"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    left.plot(nodes, ideal, "--", color="gray", label="ideal")
    left.plot(nodes, measured, "o-", color="tab:blue", label="measured")
    left.set(title=title, xlabel="nodes", ylabel=ylabel, xticks=nodes)
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(nodes, [1.0] * len(nodes), "--", color="gray", label="ideal")
    right.plot(nodes, [r["efficiency"] for r in rows], "o-", color="tab:orange", label="measured")
    right.set(title="Scaling efficiency", xlabel="nodes", ylabel="efficiency", xticks=nodes)
    right.set_ylim(0, max(1.1, max(r["efficiency"] for r in rows) * 1.1))
    right.legend()
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
