"""Which ports must be free on which host: one rule (`ports_needed`), asked with one probe (`holders`), by the
launch and by `launch check`."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from launcher.errors import RunError
from launcher.hosts import check
from launcher.hosts.ports import RENDEZVOUS_ROLE, SUPERVISORS_ROLE, check_free, free_port_pair, holders, ports_needed
from launcher.spec import ClusterSpec, Host, load_job


def test_one_node_needs_the_rendezvous_port_several_also_the_next() -> None:
    assert ports_needed(29500, 1) == {29500: RENDEZVOUS_ROLE}
    assert ports_needed(29500, 2) == {29500: RENDEZVOUS_ROLE, 29501: SUPERVISORS_ROLE}
    assert list(ports_needed(41000, 8)) == [41000, 41001]


def test_the_launch_checks_port_plus_one_only_for_several_nodes() -> None:
    asked: list[int] = []

    def busy_next(port: int) -> str:
        asked.append(port)
        return 'LISTEN 0 128 *:29501 *:* users:(("nc",pid=77,fd=3))' if port == 29501 else ""

    check_free("box", 29500, 1, busy_next)
    assert asked == [29500]
    with pytest.raises(RunError, match=r"port 29501 on box \(the node supervisors' port, rendezvous \+ 1\) is in use by pid 77 \(nc\)"):
        check_free("box", 29500, 3, busy_next)


def test_a_host_without_ss_cannot_tell_so_the_launch_goes_on() -> None:
    assert holders([29500, 29501], lambda port: "no-ss\n") is None
    check_free("lab host", 29500, 3, lambda port: "no-ss\n")


def test_a_free_pair_is_what_a_run_of_several_nodes_needs_free() -> None:
    port = free_port_pair()
    assert holders(ports_needed(port, 2)) == {port: None, port + 1: None}


def ss_line(port: int) -> str:
    return f'LISTEN 0 128 *:{port} *:* users:(("nc",pid=77,fd=3))'


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch):
    """`_probe` replaced: records the ports asked on each host, whose holders `holders` finds from
    answers like ss's; `busy` says which ports are taken."""
    asked: dict[str, list[int]] = {}
    busy: set[int] = set()
    lock = threading.Lock()

    def probe(host: Host, numbers: list[int], python: str = ""):
        with lock:
            asked[host.name] = list(numbers)
        lines = ["docker=24.0", "gpus=0", "disk_kb=90000000", "time=100.0"]
        lines += ["torch=2.4.0"] if python else []
        held = holders(numbers, lambda port: ss_line(port) if port in busy else "")
        return "\n".join(lines) + "\n", 100.0, 100.0, held

    monkeypatch.setattr(check, "_probe", probe)
    return asked, busy


HOSTS = (Host("h1", "192.0.2.1"), Host("h2", "192.0.2.2"), Host("h3", "192.0.2.3"))


def _job(tmp_path: Path, extra: str = "") -> object:
    (tmp_path / "job.yaml").write_text("name: j\nnproc_per_node: 1\nruntime: host\ncommand: [python, -c, 'print(1)']\n" + extra)
    return load_job(tmp_path / "job.yaml")


def test_check_of_an_inventory_checks_the_ports_on_its_first_host_only(probed) -> None:
    asked, busy = probed
    results = check.check_cluster(ClusterSpec(None, HOSTS), 29500)
    assert asked == {"h1": [29500, 29501], "h2": [], "h3": []}
    assert all(r.ok for r in results)
    assert "port 29500 free, port 29501 free (for multi-node runs)" in results[0].line()
    assert "port" not in results[1].line()


def test_check_of_an_inventory_says_port_plus_one_as_needed_for_multi_node_runs(probed) -> None:
    _, busy = probed
    busy.add(29501)
    first = check.check_cluster(ClusterSpec(None, HOSTS), 29500)[0]
    assert first.ok, "one-node runs do not need port + 1"
    assert "ok; note: port 29501 is in use (the node supervisors' port, rendezvous + 1, needed for multi-node runs)" in first.line()
    busy.add(29500)
    first = check.check_cluster(ClusterSpec(None, HOSTS), 29500)[0]
    assert first.problems == ["port 29500 is in use (the rendezvous port)"]


def test_check_of_a_job_checks_what_the_launch_checks(probed, tmp_path: Path) -> None:
    asked, busy = probed
    busy.update({29500, 29501})
    job = _job(tmp_path)
    results, _ = check.check_job(job, HOSTS, 29500, "python3", port_fixed=False)  # a lab run: 29500 by default
    assert asked == {"h1": [29500, 29501], "h2": [], "h3": []}
    assert [r.ok for r in results] == [False, True, True]
    assert results[0].problems == ["port 29500 is in use (the rendezvous port)",
                                   "port 29501 is in use (the node supervisors' port, rendezvous + 1)"]
    asked.clear()
    check.check_job(job, HOSTS[:1], 29500, "python3", port_fixed=False)  # one lab node: no supervisors' port
    assert asked == {"h1": [29500]}


def test_check_of_a_one_box_job_with_no_fixed_port_checks_no_port(probed, tmp_path: Path) -> None:
    asked, busy = probed
    busy.add(29500)
    here = (Host("box", "local"),)
    results, _ = check.check_job(_job(tmp_path), here, 29500, "python3", port_fixed=False)
    assert asked == {"box": []} and results[0].ok and "port" not in results[0].line()
    asked.clear()
    results, _ = check.check_job(_job(tmp_path, "rdzv_port: 29500\n"), here, 29500, "python3", port_fixed=True)
    assert asked == {"box": [29500]} and results[0].problems == ["port 29500 is in use (the rendezvous port)"]


def test_a_host_without_ss_says_its_ports_were_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "_probe", lambda host, numbers, python="": ("gpus=0\ntime=1.0\n", 1.0, 1.0,
                                                                          holders(numbers, lambda port: "no-ss\n")))
    result = check.check_host(HOSTS[0], {29500: RENDEZVOUS_ROLE}, needs_docker=False)
    assert result.ok and "ports not checked (no ss there)" in result.line()


def test_check_of_a_one_box_inventory_checks_no_port_unless_one_is_given(probed) -> None:
    asked, busy = probed
    busy.add(29500)
    box = ClusterSpec(None, (Host("box", "local"),))
    assert check.check_cluster(box, 29500, port_given=False)[0].ok and asked == {"box": []}, "one-box runs take a free port"
    assert not check.check_cluster(box, 29500, port_given=True)[0].ok and asked == {"box": [29500, 29501]}
