"""Scaling across node counts: speedup and efficiency from run summaries, as JSON, Markdown and a plot.

Weak scaling at a fixed per-rank batch: with throughput T(N) at N nodes and the smallest node count
N0 as the baseline, speedup(N) = T(N) / T(N0) and efficiency(N) = T(N) / ((N / N0) x T(N0)); with
N0 = 1 that is T(N) / (N x T(1)). Several runs at one node count count by their median throughput.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..errors import SpecError

FILES = ("scaling.json", "scaling.md", "scaling.png")


def check_comparable(summaries: dict[str, dict[str, Any]]) -> None:
    """Refuse to compare runs of different jobs, per-rank batches, or runs without throughput."""
    first_label, first = next(iter(summaries.items()))
    for label, summary in summaries.items():
        if summary.get("throughput_samples_per_s") is None:
            raise SpecError(f"{label}: has no throughput (status {summary.get('status')}, metrics missing); it cannot be compared")
        if summary.get("job") != first.get("job"):
            raise SpecError(f"{label}: job '{summary.get('job')}' differs from {first_label}: job '{first.get('job')}'; "
                            "only runs of one job can be compared")
        if summary.get("samples_per_step_per_rank") != first.get("samples_per_step_per_rank"):
            raise SpecError(
                f"{label}: {summary.get('samples_per_step_per_rank')} samples per step per rank differs from {first_label}: "
                f"{first.get('samples_per_step_per_rank')}; scaling compares runs at the same per-rank batch"
            )


def scaling_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per node count, ascending: `{nodes, world_size, throughput_samples_per_s, speedup, efficiency, runs}`."""
    by_nodes: dict[int, list[dict[str, Any]]] = {}
    for summary in summaries:
        by_nodes.setdefault(int(summary["nodes"]), []).append(summary)
    counts = sorted(by_nodes)
    throughput = {n: statistics.median(s["throughput_samples_per_s"] for s in by_nodes[n]) for n in counts}
    base_n = counts[0]
    base_t = throughput[base_n]
    rows = []
    for n in counts:
        speedup = throughput[n] / base_t if base_t else 0.0
        rows.append({
            "nodes": n,
            "world_size": max(int(s["world_size"]) for s in by_nodes[n]),
            "throughput_samples_per_s": round(throughput[n], 3),
            "speedup": _significant(speedup),
            "efficiency": _significant(speedup / (n / base_n)),
            "runs": sorted(s["run_id"] for s in by_nodes[n]),
        })
    return rows


def _significant(value: float, digits: int = 6) -> float:
    """Rounded to significant digits, so that small efficiencies keep their precision."""
    return float(f"{value:.{digits}g}")


def markdown(rows: list[dict[str, Any]], job: str) -> str:
    lines = [
        f"# Scaling of {job}",
        "",
        "| nodes | world size | throughput (samples/s) | speedup | efficiency |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['nodes']} | {r['world_size']} | {r['throughput_samples_per_s']:.1f} | {r['speedup']:.2f} | {r['efficiency']:.1%} |")
    base = rows[0]["nodes"]
    lines += ["", f"Speedup and efficiency against {base} node(s); efficiency = throughput_N / ((N / {base}) x throughput_{base})."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], job: str, path: Path) -> None:
    """Throughput and efficiency against node count, each with its ideal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = [r["nodes"] for r in rows]
    base_n, base_t = rows[0]["nodes"], rows[0]["throughput_samples_per_s"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    left.plot(nodes, [base_t * n / base_n for n in nodes], "--", color="gray", label="ideal (linear)")
    left.plot(nodes, [r["throughput_samples_per_s"] for r in rows], "o-", color="tab:blue", label="measured")
    left.set(title="Throughput", xlabel="nodes", ylabel="samples/s", xticks=nodes)
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(nodes, [1.0] * len(nodes), "--", color="gray", label="ideal")
    right.plot(nodes, [r["efficiency"] for r in rows], "o-", color="tab:orange", label="measured")
    right.set(title="Scaling efficiency", xlabel="nodes", ylabel="efficiency", xticks=nodes)
    right.set_ylim(0, max(1.1, max(r["efficiency"] for r in rows) * 1.1))
    right.legend()
    fig.suptitle(f"{job}: weak scaling at a fixed per-rank batch")
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
    return found
