"""The launcher<->rank contract, and how node states add up to a run's state (pure functions)."""

from __future__ import annotations

import pytest

from launcher.node import contract
from launcher.record.outcome import RunState
from launcher.run.existing import HOST_LOST, HostState, run_state


def test_rank_file_names_round_trip_with_attempts() -> None:
    assert contract.parse_rank_file(contract.rank_log(3), ".log") == (3, None)
    assert contract.parse_rank_file(contract.rank_log(12, attempt=2), ".log") == (12, 2)
    assert contract.parse_rank_file(contract.rank_status(0, attempt=0), ".status.json") == (0, 0)
    for name in ("rank.log", "rankx.log", "rank1.attempt.log", "rank1.attemptx.log", "torchrun.log", "rank1.status.json"):
        assert contract.parse_rank_file(name, ".log") is None, name


def test_rank_lines_are_split_only_for_their_own_host() -> None:
    line = contract.rank_prefix("h2", 5) + b"loss 0.3\n"
    assert contract.split_rank_line(line, "h2") == (5, b"loss 0.3\n")
    assert contract.split_rank_line(line, "h1") is None
    assert contract.split_rank_line(b"[h2/x] text\n", "h2") is None
    assert contract.split_rank_line(contract.agent_prefix("h2") + b"text\n", "h2") is None


def test_events_round_trip_and_ordinary_lines_are_not_events() -> None:
    line = contract.event_line("attempt", host="h1", attempt=1, reason="rank 2 on h3 exited with code 3")
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert contract.parse_event(line) == {"event": "attempt", "host": "h1", "attempt": 1, "reason": "rank 2 on h3 exited with code 3"}
    assert contract.parse_event(b"launch-event {}\n") is None
    assert contract.parse_event(contract.EVENT_MARK + b"not json\n") is None


def test_event_kinds_keep_the_names_older_launchers_and_nodes_read() -> None:
    assert contract.EVENTS == ("rank-start", "rank-end", "attempt", "progress", "killed", "stopping", "node-end")
    assert (contract.EVENT_RANK_END, contract.EVENT_NODE_END) == ("rank-end", "node-end")


def test_secrets_format_round_trips_values_with_equals_signs() -> None:
    values = {"TOKEN": "a=b=c", "EMPTY": ""}
    assert contract.parse_secrets(contract.format_secrets(values).decode()) == values


def host(state: str, cause: str | None = None) -> HostState:
    return HostState(state, "", {"cause": cause})


@pytest.mark.parametrize("hosts, expected", [
    ([host("running"), host("stopped", "peer-failed")], RunState.RUNNING),
    ([host("succeeded"), host("succeeded")], RunState.SUCCEEDED),
    ([host("failed"), host("stopped", "peer-failed")], RunState.FAILED),
    ([host("stopped", "peer-failed"), host("stopped", "peer-failed")], RunState.FAILED),
    ([host("stopped", "timeout"), host("stopped", "timeout")], RunState.FAILED),
    ([host("stopped", "lease"), host("stopped", "lease")], RunState.LOST),
    ([host("failed"), host("stopped", "lease")], RunState.LOST),  # a rank that died of its launcher's loss
    ([host(HOST_LOST), host("stopped", "peer-lost")], RunState.FAILED),
    ([host(HOST_LOST), host("stopped", "lease")], RunState.LOST),
    ([host("stopped", "signal"), host("stopped", "signal")], RunState.STOPPED),
])
def test_node_states_add_up_to_the_run_state(hosts: list[HostState], expected: RunState) -> None:
    assert run_state({f"h{i}": h for i, h in enumerate(hosts)}) is expected
