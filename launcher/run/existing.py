"""Runs no launcher is attached to here: detached runs, runs attached to another terminal, and
attached runs whose launcher is gone.

`launch status`, `launch logs` and `launch stop` ask each node how its part is going (the node
supervisor's state file, and whether its container or process group still runs), follow the
nodes' output with the same follower an attached launcher uses (`launcher.run.follow`), stop them,
and, once a run has ended, finish it (`launcher.run.finish`) exactly as an attached run is finished.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..backends.base import Backend
from ..backends.choose import backend_of
from ..errors import EXIT_FAILED, EXIT_OK, LaunchError, SpecError
from ..hosts.parallel import on_every_host
from ..node import contract
from ..plan import STOP_GRACE_S, LaunchPlan, NodePlan
from ..record import rundir
from ..record.outcome import RunOutcome, RunState
from ..record.rundir import RunPaths
from ..results.summary import build_summary
from .console import Console, StatusLine
from .events import RunView
from .finish import finish, held, read_summary
from .follow import Follower

WATCHED_SLACK_S = 5.0  # an attached run's lease file may be this much older than its lease
STARTING_S = 120.0  # a node that has not said anything yet is starting, for this long after the plan
HOST_LOST = "lost"  # a host that cannot be asked, or whose part vanished without a word
FOLLOW_EVERY_S = 0.5  # how often a follower asks the hosts for more output
CHECK_EVERY_S = 3.0  # how often it asks them how their part is going


@dataclass
class HostState:
    state: str  # a contract node state, or HOST_LOST
    detail: str = ""
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExistingRun:
    paths: RunPaths
    plan: LaunchPlan
    _backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = backend_of(self.paths, self.plan)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    @property
    def summary(self) -> dict[str, Any] | None:
        return read_summary(self.paths)

    def watched(self, hosts: dict[str, HostState] | None = None) -> bool:
        """Whether an attached launcher is watching the run now (it renews the run's lease file; a
        node that stopped because that lease ran out says it is not)."""
        if self.plan.detached or self.plan.lease_s is None:
            return False
        if hosts and any(h.record.get("cause") == contract.STOPPED_BY_LEASE for h in hosts.values()):
            return False
        try:
            age = time.time() - self.paths.lease_file.stat().st_mtime
        except OSError:
            return False
        return age < self.plan.lease_s + WATCHED_SLACK_S


def find_run(given: Path, runs_dir: Path) -> Path:
    """A run directory as given, or a run id under `runs_dir`; SpecError listing recent runs if neither."""
    for candidate in (given, runs_dir / given):
        if (candidate / "plan.json").is_file():
            return candidate
    recent = [p.name for p in list_runs(runs_dir)[-5:]]
    hint = f"; recent runs in {runs_dir}: {', '.join(recent)}" if recent else f"; {runs_dir} holds no runs"
    raise SpecError(f"{given}: not a run directory or a run id under {runs_dir}{hint}")


def list_runs(runs_dir: Path) -> list[Path]:
    """Run directories under `runs_dir` (also inside sweep folders), oldest first."""
    found = [p.parent for p in runs_dir.glob("*/plan.json")] + [p.parent for p in runs_dir.glob("*/*/plan.json")]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def open_run(root: Path) -> ExistingRun:
    paths = RunPaths(root.resolve())
    try:
        plan = LaunchPlan.from_json(json.loads(paths.plan_file.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"{paths.plan_file}: cannot be read as a run's plan ({exc})") from None
    return ExistingRun(paths, plan)


# ---- states
def host_states(run: ExistingRun) -> dict[str, HostState]:
    """How each node's part is going, asked of every host at once; a host that cannot be asked is lost."""

    def ask(node: NodePlan) -> HostState:
        record = run.backend.state(node)
        state = record.get("state")
        if record.get("alive"):
            return HostState(contract.RUNNING, record.get("waiting") or "", record)
        if state in (contract.SUCCEEDED, contract.FAILED, contract.STOPPED):
            return HostState(state, record.get("reason") or "", record)
        local = _local_record(run.paths, node.host)  # collected already
        if local.get("state") in (contract.SUCCEEDED, contract.FAILED, contract.STOPPED):
            return HostState(local["state"], local.get("reason") or "", local)
        if not record.get("state") and time.time() - run.paths.plan_file.stat().st_mtime < STARTING_S:
            return HostState(contract.RUNNING, "starting", record)
        return HostState(HOST_LOST, "its processes are gone and it left no final state", record)

    states, errors = on_every_host(run.plan.nodes, ask, lambda n: n.host)
    for host, exc in errors.items():
        states[host] = HostState(HOST_LOST, f"unreachable: {exc}")
    return {n.host: states[n.host] for n in run.plan.nodes}


def _local_record(paths: RunPaths, host: str) -> dict[str, Any]:
    try:
        return json.loads(paths.node_status(host).read_text())
    except (OSError, ValueError):
        return {}


def run_state(hosts: dict[str, HostState]) -> RunState:
    states = [h.state for h in hosts.values()]
    causes = [h.record.get("cause") for h in hosts.values()]
    if contract.RUNNING in states:
        return RunState.RUNNING
    if contract.STOPPED_BY_LEASE in causes:
        return RunState.LOST  # the launcher watching it went away: whatever else failed came after
    failing = (contract.STOPPED_FOR_PEER_FAILED, contract.STOPPED_FOR_PEER_LOST, contract.STOPPED_BY_TIMEOUT)
    if contract.FAILED in states or any(cause in failing for cause in causes):
        return RunState.FAILED  # a rank failed, a host was lost, or the job's time ran out
    if HOST_LOST in states:
        return RunState.LOST  # a host took the only word on how it ended with it
    if contract.STOPPED in states:
        return RunState.STOPPED
    return RunState.SUCCEEDED


def describe(run: ExistingRun) -> dict[str, Any]:
    """One run's state for `launch status`: finished runs from their summary, others from their hosts
    (and a run found ended is finished: its files collected and its summary written)."""
    summary = run.summary
    if summary is None:
        hosts = host_states(run)
        state = run_state(hosts)
        if state is not RunState.RUNNING and not run.watched(hosts):
            summary = finish_ended(run, hosts, state)
    elif summary.get("collect_errors"):
        summary = collect_missing(run)
    if summary is not None:
        host_map = {n.host: _local_record(run.paths, n.host).get("state") or summary["status"] for n in run.plan.nodes}
        start, _ = _times(run, {})
        return _row(run, summary["status"], host_map, start, summary.get("wall_time_s"))
    start, _ = _times(run, hosts)
    elapsed = time.time() - start if start else None
    return _row(run, state.value, {h: s.state for h, s in hosts.items()}, start, elapsed)


def _row(run: ExistingRun, status: str, hosts: dict[str, str], start: float | None, elapsed: float | None) -> dict[str, Any]:
    return {
        "run_id": run.plan.run_id,
        "status": status,
        "detached": run.plan.detached,
        "hosts": hosts,
        "start_time": start,
        "elapsed_s": round(elapsed, 1) if elapsed is not None else None,
        "run_dir": str(run.paths.root),
    }


def _times(run: ExistingRun, hosts: dict[str, HostState]) -> tuple[float | None, float | None]:
    records = [h.record for h in hosts.values()] or [_local_record(run.paths, n.host) for n in run.plan.nodes]
    starts = [r["start_time"] for r in records if isinstance(r.get("start_time"), (int, float))]
    ends = [r["end_time"] for r in records if isinstance(r.get("end_time"), (int, float))]
    start = min(starts) if starts else run.paths.plan_file.stat().st_mtime
    return start, (max(ends) if ends else None)


# ---- finishing, stopping, following
def finish_ended(run: ExistingRun, hosts: dict[str, HostState], state: RunState,
                 forced: dict[str, str] | None = None) -> dict[str, Any]:
    """Finish a run that has ended (`state` is not RUNNING), as its hosts tell it."""
    assert state is not RunState.RUNNING
    outcome = RunOutcome(state, forced=dict(forced or {}))
    for node in run.plan.nodes:
        outcome.node_exit_codes[node.host] = hosts[node.host].record.get("exit_code")
    failed = [h for h, s in hosts.items() if s.state == contract.FAILED]
    lost = [h for h, s in hosts.items() if s.state == HOST_LOST] or [s.record["lost"] for s in hosts.values() if s.record.get("lost")]
    if failed:
        outcome.failed_node = failed[0]
    elif lost:
        outcome.failed_node = outcome.lost_host = lost[0]
    reasons = [f"{h}: {s.detail}" for h, s in hosts.items() if s.detail]
    if reasons and state is not RunState.SUCCEEDED:
        outcome.reason = "; ".join(reasons)
    start, end = _times(run, {h: HostState(s.state, s.detail, _local_record(run.paths, h) or s.record) for h, s in hosts.items()})
    outcome.wall_time_s = (end - start) if start and end else 0.0
    unreachable = {h for h, s in hosts.items() if s.state == HOST_LOST and s.detail.startswith("unreachable")}
    return finish(run.paths, run.plan, run.backend, outcome, stderr_say, unreachable)


def collect_missing(run: ExistingRun) -> dict[str, Any] | None:
    """A finished run whose summary names hosts it could not collect from (lost, or unreachable
    then): try those again, and rewrite the summary when any of them came back."""
    summary = run.summary
    missing = (summary or {}).get("collect_errors") or {}
    nodes = [n for n in run.plan.nodes if n.host in missing]
    if summary is None or not nodes:
        return summary

    def collect(node: NodePlan) -> None:
        if run.backend.state(node).get("alive"):
            raise LaunchError("its part of the run is still going")
        run.backend.collect(node, run.plan)

    with held(run.paths):  # another command may be collecting it now
        if (run.summary or {}).get("collect_errors") != missing:
            return run.summary
        collected, errors = on_every_host(nodes, collect, lambda n: n.host)
        if not collected:
            return summary
        outcome = RunOutcome(RunState(summary["status"]), summary["wall_time_s"],
                             failed_node=(summary.get("failure") or {}).get("host"), reason=summary.get("reason"),
                             collect_errors={h: str(e) or type(e).__name__ for h, e in errors.items()},
                             lost_host=summary.get("lost_host"),
                             phases={k: float(v) for k, v in (summary.get("phases_s") or {}).items()})
        # what only the launcher that ended the run knew stays as it said it
        kept = {key: summary[key] for key in ("error", "killed") if key in summary}
        summary = {**build_summary(run.plan, outcome, run.paths), **kept}
        rundir.write_json(run.paths.summary_file, summary)
    return summary


def stop_nodes(run: ExistingRun, grace_s: float = STOP_GRACE_S) -> tuple[dict[str, str], dict[str, Exception]]:
    """Stop every node's part at once: what had to be forced, and the hosts that could not be asked."""
    forced, errors = on_every_host(run.plan.nodes, lambda n: run.backend.stop(n, grace_s), lambda n: n.host)
    return {h: what for h, what in forced.items() if what}, errors


def stop(run: ExistingRun, grace_s: float = STOP_GRACE_S) -> dict[str, Any]:
    """Stop every node's part (SIGTERM, then kill after the grace period), then finish the run."""
    forced, errors = stop_nodes(run, grace_s)
    hosts = host_states(run)
    for host, exc in errors.items():
        hosts[host] = HostState(HOST_LOST, f"unreachable: could not stop it: {exc}")
    state = run_state(hosts)
    if state is RunState.RUNNING:
        raise LaunchError(f"run {run.plan.run_id}: still running on "
                          f"{', '.join(h for h, s in hosts.items() if s.state == contract.RUNNING)} after the stop")
    if state is RunState.SUCCEEDED and any(s.record.get("cause") == contract.STOPPED_BY_SIGNAL for s in hosts.values()):
        state = RunState.STOPPED
    if all(s.state == contract.STOPPED for s in hosts.values()):
        state = RunState.STOPPED
    return finish_ended(run, hosts, state, forced)


def follow(run: ExistingRun, console: Console, rank: int | None = None, verbose: bool = False) -> dict[str, Any]:
    """Show every node's output from its host as it comes, as an attached launcher shows it, until
    every node has ended; then the run's summary (finished here when no launcher is watching it)."""
    watched = run.watched()
    view = RunView(run.plan.max_restarts)
    follower = Follower(run.plan, run.backend, console, view, rank=rank, verbose=verbose)
    status = StatusLine(view.board, console, _times(run, {})[0] or time.time())
    checked = time.monotonic()
    try:
        while len(follower.ended) < len(run.plan.nodes):
            came = follower.poll()
            status.tick()
            if time.monotonic() - checked > CHECK_EVERY_S:
                checked = time.monotonic()
                if run_state(host_states(run)) is not RunState.RUNNING:
                    follower.drain()
                    break
            if not came:
                time.sleep(FOLLOW_EVERY_S)
    finally:
        status.close()
        follower.close()
    return settle(run, console, watched)


def settle(run: ExistingRun, console: Console, watched: bool = False) -> dict[str, Any]:
    """The summary of a run whose nodes have ended: its watching launcher's, or finished here (said,
    when the run was `watched` by a launcher that stopped watching it)."""
    while True:  # a node says its last line a moment before its processes are gone
        summary = run.summary
        if summary is not None:
            return summary
        hosts = host_states(run)
        state = run_state(hosts)
        if state is not RunState.RUNNING and not run.watched(hosts):
            if watched:
                console.say("launch: the run's launcher stopped watching it (killed, or cut off); finishing the run here")
            return finish_ended(run, hosts, state)
        time.sleep(FOLLOW_EVERY_S)


def print_so_far(run: ExistingRun, console: Console, rank: int | None) -> None:
    """What every node of a running run has printed so far, as the follower shows it."""
    follower = Follower(run.plan, run.backend, console, RunView(run.plan.max_restarts), rank=rank)
    try:
        follower.drain()
    finally:
        follower.close()


def print_local_logs(paths: RunPaths, rank: int | None, out: BinaryIO) -> None:
    """Every collected rank log of the run, prefixed `[host/rank]`."""
    logs = paths.rank_logs()
    if rank is not None and rank not in logs:
        raise SpecError(f"--rank: {rank} has no log in {paths.root}; ranks: {', '.join(map(str, logs)) or 'none'}")
    if not logs:  # no rank started: what torchrun itself said is the story
        agent_logs = sorted(paths.logs_dir.glob(f"*/{contract.AGENT_LOG}"))
        stderr_say("launch: no rank of this run wrote a log; torchrun's own output follows" if agent_logs else
                   "launch: no rank of this run wrote a log, and torchrun left none")
        for log in agent_logs:
            with log.open("rb") as fh:
                for line in iter(lambda: fh.readline(contract.LINE_MAX), b""):
                    out.write(line.rstrip(b"\n") + b"\n")
    for r, log in logs.items():
        if rank is not None and r != rank:
            continue
        prefix = contract.rank_prefix(log.parent.name, r)
        with log.open("rb") as fh:
            for line in iter(lambda: fh.readline(contract.LINE_MAX), b""):
                out.write(prefix + line.rstrip(b"\n") + b"\n")
    out.flush()


def exit_code(summary: dict[str, Any]) -> int:
    """The exit code of a command that waited for the run: 0 when it succeeded, else 1."""
    return EXIT_OK if summary.get("status") == RunState.SUCCEEDED.value else EXIT_FAILED


def stderr_say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
