"""Runs no launcher is watching: detached runs, and attached runs whose launcher is gone.

`launch status`, `launch logs` and `launch stop` ask each node how its part is going (the node
supervisor's state file, and whether its container or process group still runs), follow the
nodes' output, stop them, and, once a run has ended, bring every node's logs and metrics into the
run directory and write its summary, exactly as an attached run leaves them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from ..errors import EXIT_FAILED, EXIT_OK, LaunchError, SpecError
from ..hosts.parallel import on_every_host
from ..node import contract
from ..plan import STOP_GRACE_S, LaunchPlan, NodePlan
from ..results.summary import build_summary
from . import rundir
from ..results.outcome import RunOutcome, RunState
from .rundir import RunPaths
from .status import PLAIN_EVERY_S, Board
from .transport import OUTPUT_CHUNK, LocalTransport, Transport

WATCHED_SLACK_S = 5.0  # an attached run's lease file may be this much older than its lease
STARTING_S = 120.0  # a node that has not said anything yet is starting, for this long after the plan
HOST_LOST = "lost"  # a host that cannot be asked, or whose part vanished without a word


@dataclass
class HostState:
    state: str  # a contract node state, or HOST_LOST
    detail: str = ""
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExistingRun:
    paths: RunPaths
    plan: LaunchPlan
    _transport: Transport | None = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = transport_for(self.paths, self.plan)
        return self._transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def summary(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.paths.summary_file.read_text())
        except (OSError, ValueError):
            return None

    def watched(self) -> bool:
        """Whether an attached launcher is watching the run now (it renews the run's lease file)."""
        if self.plan.detached or self.plan.lease_s is None:
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


def transport_for(paths: RunPaths, plan: LaunchPlan) -> Transport:
    if all(node.is_local for node in plan.nodes):
        return LocalTransport()
    from ..hosts.remote import SshTransport  # the SSH library only for lab runs
    from ..spec import load_cluster

    cluster = load_cluster(paths.cluster_file)
    hosts = {h.name: h for h in cluster.hosts}
    missing = [n.host for n in plan.nodes if n.host not in hosts]
    if missing:
        raise SpecError(f"{paths.cluster_file}: has no host '{missing[0]}', which the run used")
    return SshTransport(hosts, paths, plan.run_id)


# ---- states
def host_states(run: ExistingRun) -> dict[str, HostState]:
    """How each node's part is going, asked of every host at once; a host that cannot be asked is lost."""

    def ask(node: NodePlan) -> HostState:
        record = run.transport.state(node)
        state = record.get("state")
        if record.get("alive"):
            return HostState(contract.RUNNING, "", record)
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
        if state is not RunState.RUNNING and not run.watched():
            summary = finish(run, hosts, state)
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
def finish(run: ExistingRun, hosts: dict[str, HostState], state: RunState) -> dict[str, Any]:
    """Collect every reachable node's files, then write and return the run's summary (of a run
    that has ended: `state` is not RUNNING)."""
    assert state is not RunState.RUNNING
    outcome = RunOutcome(state.value, EXIT_OK if state is RunState.SUCCEEDED else EXIT_FAILED, 0.0)
    for node in run.plan.nodes:
        host = hosts[node.host]
        outcome.node_exit_codes[node.host] = host.record.get("exit_code")
        if host.state == HOST_LOST and host.detail.startswith("unreachable"):
            outcome.collect_errors[node.host] = f"{host.detail}; its logs stay on it ({node.node_dir})"
            continue
        try:
            run.transport.collect(node, run.plan)
        except Exception as exc:  # noqa: BLE001 - one host's trouble must not lose the others' results
            outcome.collect_errors[node.host] = str(exc) or type(exc).__name__
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
    summary = build_summary(run.plan, outcome, run.paths)
    rundir.write_json(run.paths.summary_file, summary)
    return summary


def collect_missing(run: ExistingRun) -> dict[str, Any] | None:
    """A finished run whose summary names hosts it could not collect from (lost, or unreachable
    then): try those again, and rewrite the summary when any of them came back."""
    summary = run.summary
    missing = (summary or {}).get("collect_errors") or {}
    nodes = [n for n in run.plan.nodes if n.host in missing]
    if summary is None or not nodes:
        return summary

    def collect(node: NodePlan) -> None:
        if run.transport.state(node).get("alive"):
            raise LaunchError("its part of the run is still going")
        run.transport.collect(node, run.plan)

    collected, errors = on_every_host(nodes, collect, lambda n: n.host)
    if not collected:
        return summary
    outcome = RunOutcome(summary["status"], summary["exit_code"], summary["wall_time_s"],
                         failed_node=(summary.get("failure") or {}).get("host"), reason=summary.get("reason"),
                         collect_errors={h: str(e) or type(e).__name__ for h, e in errors.items()},
                         lost_host=summary.get("lost_host"))
    summary = build_summary(run.plan, outcome, run.paths)
    rundir.write_json(run.paths.summary_file, summary)
    return summary


def stop_nodes(run: ExistingRun, grace_s: float = STOP_GRACE_S) -> dict[str, Exception]:
    """Stop every node's part at once; the hosts that could not be asked."""
    _, errors = on_every_host(run.plan.nodes, lambda n: run.transport.stop(n, grace_s), lambda n: n.host)
    return errors


def stop(run: ExistingRun, grace_s: float = STOP_GRACE_S) -> dict[str, Any]:
    """Stop every node's part (SIGTERM, then kill after the grace period), then finish the run."""
    errors = stop_nodes(run, grace_s)
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
    return finish(run, hosts, state)


def follow(run: ExistingRun, rank: int | None, out: BinaryIO, say: Callable[[str], None],
           shown: dict[tuple[str, int], int] | None = None) -> dict[str, Any]:
    """Print every node's output from its host as it comes, until every node has ended; then finish
    the run and return its summary. `shown`: how many lines of each (host, rank) were printed
    already (from the local logs of a run whose launcher stopped watching it), not printed again."""
    offsets = {n.host: 0 for n in run.plan.nodes}
    partial = {n.host: b"" for n in run.plan.nodes}
    ended: set[str] = set()
    last_check = 0.0
    board, started = Board(), None  # the ranks' progress, said on stderr every PLAIN_EVERY_S
    last_progress = time.monotonic()
    while True:
        reading = [n for n in run.plan.nodes if n.host not in ended]
        # every host at once: hosts that do not answer cost a round one time-out, not one each
        new, _ = on_every_host(reading, lambda n: run.transport.read_output(n, offsets[n.host]), lambda n: n.host)
        for node in reading:
            data = new.get(node.host, b"")
            offsets[node.host] += len(data)
            lines = (partial[node.host] + data).split(b"\n")
            partial[node.host] = lines.pop()
            for line in lines:
                if show_line(line + b"\n", node.host, rank, out, say, board, shown):
                    ended.add(node.host)
        out.flush()
        if len(ended) == len(run.plan.nodes):
            break
        if time.monotonic() - last_check > 3:
            last_check = time.monotonic()
            hosts = host_states(run)
            started = started or _times(run, hosts)[0]
            if run_state(hosts) is not RunState.RUNNING and not run.watched():
                break
        if board.ranks and started and time.monotonic() - last_progress >= PLAIN_EVERY_S:
            last_progress = time.monotonic()
            say(f"launch: progress: {board.line(time.time() - started)}")
        time.sleep(0.5)
    while True:  # a node says its last line a moment before its processes are gone
        hosts = host_states(run)
        state = run_state(hosts)
        if state is not RunState.RUNNING:
            return finish(run, hosts, state)
        time.sleep(0.5)


def output_lines(run: ExistingRun, node: NodePlan) -> Iterator[bytes]:
    """A node's output so far, line by line, read a chunk at a time."""
    offset, partial = 0, b""
    while data := run.transport.read_output(node, offset):
        offset += len(data)
        lines = (partial + data).split(b"\n")
        partial = lines.pop()
        yield from (line + b"\n" for line in lines)
    if partial:
        yield partial + b"\n"


def show_line(line: bytes, host: str, rank: int | None, out: BinaryIO, say: Callable[[str], None],
              board: Board | None = None, shown: dict[tuple[str, int], int] | None = None) -> bool:
    """Print one line of a node's output (a progress event goes on the board; a rank line counted
    in `shown` is skipped); True when it is the node's last (its end event)."""
    event = contract.parse_event(line)
    if event is not None:
        if event.get("event") == "progress" and board is not None:
            board.update(event.get("ranks"))
        elif event.get("event") == "attempt":
            say(f"launch: {host}: attempt {int(event['attempt']) + 1} of {event.get('attempts')} "
                f"(restart {event['attempt']}): the last attempt ended because {event.get('reason')}")
        elif event.get("event") == "stopping":
            say(f"launch: {host} is stopping: {event.get('reason')}")
        return event.get("event") == "node-end"
    split = contract.split_rank_line(line, host)
    if split is None:
        if rank is None:
            out.write(line)
        return False
    if shown and shown.get((host, split[0]), 0) > 0:
        shown[(host, split[0])] -= 1
        return False
    if rank is None or split[0] == rank:
        out.write(line)
    return False


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


def follow_watched(run: ExistingRun, rank: int | None, out: BinaryIO, shown: dict[tuple[str, int], int]) -> bool:
    """Follow the local rank logs of a run its attached launcher is watching; True when the run ended
    with a summary, False when its launcher stopped watching it without one. `shown` counts the
    lines printed per (host, rank)."""
    offsets: dict[Path, int] = {}
    while True:
        done = run.paths.summary_file.exists()
        gone = not done and not run.watched()
        more = False
        for r, log in run.paths.rank_logs().items():
            if rank is not None and r != rank:
                continue
            with log.open("rb") as fh:
                fh.seek(offsets.get(log, 0))
                data = fh.read(OUTPUT_CHUNK)
            full = len(data) == OUTPUT_CHUNK
            more = more or full
            # whole lines only, so a line being written is not split (unless one line fills a whole chunk)
            end = len(data) if done and not full else data.rfind(b"\n") + 1 or (len(data) if full else 0)
            offsets[log] = offsets.get(log, 0) + end
            prefix = contract.rank_prefix(log.parent.name, r)
            for line in data[:end].split(b"\n")[: -1 if data[:end].endswith(b"\n") else None]:
                out.write(prefix + line + b"\n")
                shown[(log.parent.name, r)] = shown.get((log.parent.name, r), 0) + 1
        out.flush()
        if more:
            continue
        if done:
            return True
        if gone:
            return False
        time.sleep(0.5)


def exit_code(summary: dict[str, Any]) -> int:
    return EXIT_OK if summary.get("status") == RunState.SUCCEEDED.value else EXIT_FAILED


def stderr_say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

