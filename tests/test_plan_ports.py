"""One rule for the ports a run listens on: the plan listens where the launch's check and `launch check`
look, and both ask the same probe the same ports (`launcher.plan.ports`, `launcher.hosts.ports.holders`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.hosts import ports
from launcher.plan import PlanOptions, make_plan
from launcher.plan.ports import first_host_ports
from launcher.spec import load_cluster, load_job, select_hosts

LAB = "hosts:\n" + "".join(f"  - {{name: h{i}, address: 192.0.2.{i}, slots: 1}}\n" for i in (1, 2, 3))
BOX = "hosts:\n  - {name: box, address: local}\n"
CASES = {  # name: (inventory, job's extra keys, nodes, the ports rank 0's host must have free)
    "one box, no port": (BOX, "", 1, []),
    "one box, a fixed port": (BOX, "rdzv_port: 41000\n", 1, [41000]),
    "one lab node": (LAB, "", 1, [29500]),
    "three lab nodes": (LAB, "", 3, [29500, 29501]),
    "three lab nodes, a fixed port": (LAB, "rdzv_port: 41000\n", 3, [41000, 41001]),
}


def _job(tmp_path: Path, case: str) -> Path:
    inventory, extra, nodes, _ = CASES[case]
    (tmp_path / "cluster.yaml").write_text(inventory)
    (tmp_path / "job.yaml").write_text(f"name: j\nruntime: host\nnodes: {nodes}\nnproc_per_node: 1\n"
                                       f"command: [python, -c, 'print(1)']\n{extra}")
    return tmp_path / "job.yaml"


class _Stop(Exception):
    """Raised where the launch would go on to plan and start its nodes."""


class _Conn:
    def close(self) -> None:
        pass


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Every `holders` question (the ports asked), answered "free"; no SSH: lab hosts answer the probe
    as healthy ones would, and a launch stops where it would plan."""
    from launcher.backends import deploy, local
    from launcher.hosts import ssh

    questions: list[list[int]] = []
    monkeypatch.setattr(ports, "holders", lambda numbers, listeners=None: (questions.append(list(numbers)),
                                                                           {n: None for n in numbers})[1])
    monkeypatch.setattr(ssh, "as_ssh_reaches", lambda hosts: hosts)
    monkeypatch.setattr(ssh, "connect", lambda host: _Conn())
    monkeypatch.setattr(ssh, "run", lambda conn, argv, timeout=60: (0, "docker=24.0\ngpus=0\ntorch=2.4.0\n"))
    monkeypatch.setattr(deploy, "connect_all", lambda hosts: {h.name: _Conn() for h in hosts})
    monkeypatch.setattr(deploy, "detect_nics", lambda hosts, conns: {})
    for planner in (deploy, local):
        monkeypatch.setattr(planner, "make_plan", lambda *a, **k: (_ for _ in ()).throw(_Stop()))
    return questions


@pytest.mark.parametrize("case", list(CASES))
def test_launch_check_asks_what_the_launch_asks(case: str, asked: list[list[int]], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.cli import main
    from launcher.run.conduct import RunRequest, run_once

    job_file = _job(tmp_path, case)
    job = load_job(job_file)
    with pytest.raises(_Stop):
        run_once(job, load_cluster(tmp_path / "cluster.yaml"), RunRequest(runs_dir=tmp_path / "runs"))
    by_launch = [p for question in asked for p in question]
    asked.clear()
    main(["check", str(job_file)])
    by_check = [p for question in asked for p in question]
    capsys.readouterr()
    assert by_launch == by_check == CASES[case][3]


@pytest.mark.parametrize("case", list(CASES))
def test_the_plan_listens_on_the_ports_the_checks_ask(case: str, tmp_path: Path) -> None:
    job = load_job(_job(tmp_path, case))
    hosts = select_hosts(job, load_cluster(tmp_path / "cluster.yaml"))
    fixed = job.rdzv_port or (None if hosts[0].is_local else 29500)
    plan = make_plan(job, hosts, "r", PlanOptions(run_dir="/runs/r", workdir_hash="abc", rdzv_port=None if fixed else 45000))
    listens = [plan.master_port]
    for node in plan.nodes:  # node 0's supervisor listens where the others connect
        if "--coordinator" in node.argv:
            listens.append(int(node.argv[node.argv.index("--coordinator") + 1].rsplit(":", 1)[1]))
    listens = sorted(set(listens))
    checked = list(first_host_ports(job, hosts))
    assert checked == (listens if fixed else []), "a one-box run that fixes no port takes a pair just found free"
    assert listens == list(ports.ports_needed(plan.master_port, plan.nnodes))
