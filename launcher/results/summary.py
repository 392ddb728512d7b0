"""The result of a run: summary.json (README: "Where results land", its fields) and the table printed at the end."""

from __future__ import annotations

import json
import statistics
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Console as RichConsole
from rich.table import Table

from ..record.outcome import RunOutcome, RunState
from .stats import STRAGGLER_THRESHOLD, MetricsSource, pick_source, rank_stats, read_records, stragglers
from ..node import contract
from ..plan import LaunchPlan
from ..record.rundir import RunPaths
from .terminal import printable_text

LAST_LINES = 20


def last_lines(path: Path, count: int = LAST_LINES) -> list[str]:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=count)]
    except OSError:
        return []


def build_summary(plan: LaunchPlan, outcome: RunOutcome, paths: RunPaths) -> dict[str, Any]:
    """Everything the run directory says about how the run went, as one JSON-able mapping."""
    statuses = paths.rank_statuses()
    ranks, batches = _rank_rows(plan, statuses, paths)
    reported = [r["samples_per_s"] for r in ranks if r["samples_per_s"] is not None]
    summary: dict[str, Any] = {
        "run_id": plan.run_id,
        "job": plan.job,
        "status": RunState(outcome.status).value,
        "exit_code": outcome.exit_code,
        "restarts": _restarts(plan, statuses, paths),
        "nodes": plan.nnodes,
        "hosts": [n.host for n in plan.nodes],
        "world_size": plan.world_size if plan.world_size is not None else len(ranks),
        "backend": plan.backend,
        "wall_time_s": round(outcome.wall_time_s, 3),
        "throughput_samples_per_s": round(sum(reported), 3) if reported else None,
        "samples_per_step_per_rank": statistics.median(batches) if batches else None,
        "warmup_steps": plan.warmup_steps,
        "metrics_missing": [r["rank"] for r in ranks if r["samples_per_s"] is None],
        "straggler_threshold": STRAGGLER_THRESHOLD,
        "stragglers": _stragglers(ranks),
        "ranks": ranks,
    }
    _add_ending(summary, plan, outcome, statuses, paths)
    return summary


def _rank_rows(plan: LaunchPlan, statuses: dict[int, dict[str, Any]], paths: RunPaths) -> tuple[list[dict[str, Any]], list[float]]:
    """Per rank that left a status or a log: where it ran, how it ended, its step statistics; and the
    samples per step of those with statistics."""
    logs = paths.rank_logs()
    ranks = []
    batches = []
    numbered = sorted(set(statuses) | set(logs))
    source, records = pick_source({rank: read_records(paths.metrics_file(rank)) for rank in numbered},
                                  {rank: read_records(paths.auto_metrics_file(rank)) for rank in numbered})
    for rank in numbered:
        status = statuses.get(rank, {})
        host = status.get("host") or logs[rank].parent.name
        stats = rank_stats(records.get(rank, []), plan.warmup_steps)
        if stats:
            batches.append(stats.samples_per_step)
        ranks.append(
            {
                "rank": rank,
                "host": host,
                "exit_code": status.get("exit_code"),
                "wall_time_s": status.get("wall_time_s"),
                "steps": stats.steps if stats else 0,
                "warmup_steps_excluded": stats.warmup_excluded if stats else 0,
                "samples_per_s": round(stats.samples_per_s, 3) if stats else None,
                "step_time_median_s": round(stats.step_time_median_s, 6) if stats else None,
                "step_time_p95_s": round(stats.step_time_p95_s, 6) if stats else None,
                "metrics_source": source.value if stats and source else None,
            }
        )
    return ranks, batches


def _stragglers(ranks: list[dict[str, Any]]) -> dict[str, list]:
    """The ranks, and the hosts (by their ranks' median), whose median step time is far above the others'."""
    rank_medians = {r["rank"]: r["step_time_median_s"] for r in ranks if r["step_time_median_s"] is not None}
    by_host: dict[str, list[float]] = {}
    for r in ranks:
        if r["step_time_median_s"] is not None:
            by_host.setdefault(r["host"], []).append(r["step_time_median_s"])
    return {
        "ranks": stragglers(rank_medians),
        "hosts": stragglers({h: statistics.median(v) for h, v in by_host.items()}),
    }


def _add_ending(summary: dict[str, Any], plan: LaunchPlan, outcome: RunOutcome, statuses: dict[int, dict[str, Any]],
                paths: RunPaths) -> None:
    """How the run ended, beyond its status: why, what could not be collected, the host lost, the
    phases' times, what had to be killed, the first failure; then its folders and outputs."""
    if outcome.reason:
        summary["reason"] = outcome.reason
    if outcome.collect_errors:
        summary["collect_errors"] = outcome.collect_errors
    if outcome.lost_host:
        summary["lost_host"] = outcome.lost_host
    if outcome.phases:
        summary["phases_s"] = {name: round(seconds, 3) for name, seconds in outcome.phases.items()}
    killed = _killed(plan, paths, outcome)
    if killed:
        summary["killed"] = killed
    if outcome.status == RunState.FAILED:
        summary["failure"] = first_failure(outcome, statuses, paths)
    summary["resumed_from"] = plan.resumed_from
    summary["run_folders"] = _run_folders(plan, paths)
    summary["outputs"] = _outputs(plan, paths)


def _run_folders(plan: LaunchPlan, paths: RunPaths) -> dict[str, str]:
    """Per host, the run's own folder when it kept files there (or when its node did not say: a lost host)."""
    found = {}
    for node in plan.nodes:
        if not node.state_dir:
            continue
        try:
            kept = json.loads(paths.node_status(node.host).read_text()).get("kept")
        except (OSError, ValueError, AttributeError):
            kept = None
        if not isinstance(kept, dict) or any(kept.values()):
            found[node.host] = node.state_dir
    return found


def _outputs(plan: LaunchPlan, paths: RunPaths) -> dict[str, dict]:
    """Per host: what the ranks wrote in their working directory that came back, and what stayed."""
    found = {}
    for node in plan.nodes:
        try:
            found[node.host] = json.loads(paths.outputs_record(node.host).read_text())
        except (OSError, ValueError):
            continue
    return found


def describe_outputs(summary: dict[str, Any]) -> list[str]:
    """The summary's lines about outputs and the run's own folders."""
    lines = []
    for host, record in (summary.get("outputs") or {}).items():
        if record.get("files"):
            lines.append(f"outputs of {host}: {record['files']} file(s), {_size(record.get('bytes', 0))}, in "
                         f"{contract.OUTPUTS}/{host}/")
        if record.get("left_on_host_count"):
            named = ", ".join(record.get("left_on_host") or [])
            more = record["left_on_host_count"] - len(record.get("left_on_host") or [])
            lines.append(f"outputs of {host} over the {_size(record.get('limit_bytes') or 0)} limit (outputs_limit) or not "
                         "readable stay on it: "
                         f"{record['left_on_host_count']} file(s), {_size(record.get('left_on_host_bytes', 0))}, in "
                         f"{record.get('left_at')}: {named}" + (f" and {more} more" if more > 0 else ""))
    if summary.get("resumed_from"):
        lines.append(f"started from the checkpoints and outputs of run {summary['resumed_from']}")
    return lines


def _size(count: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def describe_killed(processes: list[dict]) -> str:
    """`rank 0: python train.py (pid 12), rank 0's wrapper (pid 11), pid 9 (python -m launcher.node.torchrun ...)`."""
    parts = []
    for proc in processes:
        command = str(proc.get("command") or "?")
        if proc.get("rank") is not None and "launcher.node.rankexec" in command:
            parts.append(f"rank {proc['rank']}'s wrapper (pid {proc.get('pid')})")
        elif proc.get("rank") is not None:
            parts.append(f"rank {proc['rank']}: {command[:60]} (pid {proc.get('pid')})")
        elif proc.get("pid") is None:
            parts.append(str(proc.get("command")))
        else:
            parts.append(f"pid {proc.get('pid')} ({str(proc.get('command') or '?')[:60]})")
    return ", ".join(parts)


def _killed(plan: LaunchPlan, paths: RunPaths, outcome: RunOutcome) -> dict[str, list[dict]]:
    """Per host: the processes its supervisor had to kill after the grace period, and nodes the
    launcher itself had to force."""
    found: dict[str, list[dict]] = {}
    for node in plan.nodes:
        try:
            killed = json.loads(paths.node_status(node.host).read_text()).get("killed") or []
        except (OSError, ValueError, TypeError, AttributeError):
            killed = []
        if killed:
            found[node.host] = [k for k in killed if isinstance(k, dict)]
        if node.host in outcome.forced:
            found.setdefault(node.host, []).append({"pid": None, "rank": None, "command": outcome.forced[node.host]})
    return found


def _restarts(plan: LaunchPlan, statuses: dict[int, dict[str, Any]], paths: RunPaths) -> int:
    """Restarts of the group: what the nodes' supervisors counted, or the ranks' last attempt."""
    counts = [int(s.get("attempt") or 0) for s in statuses.values()]
    for node in plan.nodes:
        try:
            counts.append(int(json.loads(paths.node_status(node.host).read_text()).get("restarts") or 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return max(counts, default=0)


def first_failure(outcome: RunOutcome, statuses: dict[int, dict[str, Any]], paths: RunPaths) -> dict[str, Any]:
    """The root cause: the earliest rank that ended with an error on its own (not stopped by us)."""
    failed = [s for s in statuses.values() if s.get("exit_code") not in (0, None) and not s.get("stopped")]
    if failed and not outcome.lost_host:
        first = min(failed, key=lambda s: s.get("end_time", 0.0))
        log = paths.rank_log(first["host"], first["rank"])
        return {
            "host": first["host"],
            "rank": first["rank"],
            "exit_code": first["exit_code"],
            "log": str(log),
            "last_lines": last_lines(log),
        }
    host = outcome.failed_node or next(iter(outcome.node_exit_codes), None)
    log = paths.agent_log(host) if host and paths.agent_log(host).exists() else None
    # torchrun's last lines tell why it failed, not why it was stopped (its traceback of the signal)
    lines = last_lines(log) if log and not _stopped_on_purpose(paths, host) else []
    return {
        "host": host,
        "rank": None,
        "exit_code": outcome.node_exit_codes.get(host) if host else None,
        "log": str(log) if log else None,
        "last_lines": lines or outcome.before_supervisor.get(host or "", [])[-LAST_LINES:],
        "reason": outcome.reason or "the node's torchrun failed before any rank ended with an error",
    }


def _stopped_on_purpose(paths: RunPaths, host: str | None) -> bool:
    """Whether the host's node was stopped from outside (a stop, a timeout, its lost launcher)."""
    try:
        cause = json.loads(paths.node_status(host or "").read_text()).get("cause")
    except (OSError, ValueError, AttributeError):
        return False
    return cause in (contract.STOPPED_BY_SIGNAL, contract.STOPPED_BY_LEASE, contract.STOPPED_BY_TIMEOUT,
                     contract.STOPPED_BY_PREEMPTION)


def render(summary: dict[str, Any], console: RichConsole) -> None:
    """The end-of-run table and the failure, if any, as a person reads them."""
    table = Table(title=f"run {summary['run_id']}: {summary['status']}", title_justify="left")
    for column in ("rank", "host", "exit", "steps", "samples/s", "median step (s)", "p95 step (s)", "wall (s)"):
        table.add_column(column, justify="left" if column == "host" else "right")
    slow = set(summary["stragglers"]["ranks"])
    for r in summary["ranks"]:
        table.add_row(
            f"{r['rank']}{' *' if r['rank'] in slow else ''}",
            r["host"],
            _fmt(r["exit_code"]),
            str(r["steps"]),
            _fmt(r["samples_per_s"], ".1f"),
            _fmt(r["step_time_median_s"], ".4f"),
            _fmt(r["step_time_p95_s"], ".4f"),
            _fmt(r["wall_time_s"], ".2f"),
        )
    console.print(table)
    throughput = summary["throughput_samples_per_s"]
    line = f"{summary['nodes']} node(s), world size {summary['world_size']}, {summary['backend']}, wall time {summary['wall_time_s']:.2f} s"
    if throughput is not None:
        line += f", throughput {throughput:.1f} samples/s"
    if summary.get("restarts"):
        line += f", {summary['restarts']} restart(s) (earlier attempts' logs: rank<R>.attempt<K>.log)"
    console.print(line, highlight=False)
    phases = summary.get("phases_s") or {}
    if phases:
        console.print("time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())
                      + f" ({sum(phases.values()):.1f} s in all)", highlight=False)
    if summary["throughput_samples_per_s"] is not None:
        console.print(warmup_sentence(summary), highlight=False)
    if any(r.get("metrics_source") == MetricsSource.AUTO.value for r in summary["ranks"]):
        console.print("step metrics measured by launch (optimizer steps, DataLoader batch sizes): the job wrote none", highlight=False)
    if slow or summary["stragglers"]["hosts"]:
        hosts = ", ".join(summary["stragglers"]["hosts"]) or "none"
        console.print(
            f"stragglers (*): rank(s) {', '.join(map(str, sorted(slow))) or 'none'}, host(s) {hosts}: median step time "
            f"above {summary['straggler_threshold']:g} x the median of all",
            highlight=False,
        )
    if summary["metrics_missing"]:
        missing = ", ".join(str(r) for r in summary["metrics_missing"])
        console.print(f"no metrics from rank(s) {missing}: throughput counts only the ranks that reported", highlight=False)
    if summary.get("reason"):
        console.print(summary["reason"], highlight=False)
    for text in describe_outputs(summary):
        console.print(text, highlight=False, markup=False)
    for host, processes in (summary.get("killed") or {}).items():
        console.print(f"had to be killed on {host} (they outlived the stop's grace period): {describe_killed(processes)}",
                      highlight=False, markup=False)
    failure = summary.get("failure")
    if failure:
        who = f"rank {failure['rank']} on {failure['host']}" if failure["rank"] is not None else f"node {failure['host']}"
        if failure.get("log"):
            console.print(f"[bold red]first failure:[/] {who}, exit code {failure['exit_code']}; log: {failure['log']}", highlight=False)
        else:
            console.print(f"[bold red]first failure:[/] {who} (no log from it here)", highlight=False)
        for text in failure["last_lines"][-10:]:
            console.print(f"  | {printable_text(text)}", markup=False, highlight=False)


def warmup_sentence(summary: dict[str, Any]) -> str:
    """What the step times left out, as it happened: each measured rank's `warmup_steps_excluded`
    (a rank with no more steps than `warmup_steps` is measured on all of them)."""
    warmup = summary.get("warmup_steps") or 0
    by_excluded: dict[int, list[int]] = {}
    for r in summary["ranks"]:
        if r.get("samples_per_s") is not None:  # ranks without step records are named elsewhere
            by_excluded.setdefault(int(r.get("warmup_steps_excluded") or 0), []).append(r["rank"])
    if not warmup:
        return "step times count every step (warmup_steps: 0)"
    left_out = {k: ranks for k, ranks in by_excluded.items() if k}
    kept = by_excluded.get(0, [])
    if not left_out:
        return f"no warm-up steps left out: {_every_rank(kept)} had {_steps(warmup)} or fewer, so all of them count"
    if not kept and len(left_out) == 1:
        return f"step times leave out each rank's first {_steps(next(iter(left_out)))} (warm-up)"
    parts = [f"the first {_steps(k)} of {_rank_list(ranks)}" for k, ranks in sorted(left_out.items())]
    text = "step times leave out " + "; ".join(parts) + " (warm-up)"
    if kept:
        text += f"; none of {_rank_list(kept)}: {'it' if len(kept) == 1 else 'they'} had {_steps(warmup)} or fewer"
    return text


def _every_rank(ranks: list[int]) -> str:
    return "the rank" if len(ranks) == 1 else "every rank"


def _steps(count: int) -> str:
    return "1 step" if count == 1 else f"{count} steps"


def _rank_list(ranks: list[int]) -> str:
    """`rank 3`, `ranks 0-3, 6`: runs of consecutive ranks as ranges, so a large world stays one line."""
    ordered = sorted(ranks)
    spans: list[list[int]] = []
    for rank in ordered:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"rank {text}" if len(ordered) == 1 else f"ranks {text}"


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)
