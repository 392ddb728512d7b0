"""Slurm's commands: what each prints (as Slurm 22.05 prints it) read by the parsers, and SlurmCtl's
runs, on this machine with harmless commands, and through a stand-in for the login host's SSH."""

from __future__ import annotations

import shlex

import pytest

from launcher.backends import slurmctl
from launcher.backends.slurmctl import (JobInfo, Partition, SlurmCtl, base_state, expand_hostlist, one_line, parse_sacct,
                                        parse_sbatch, parse_scontrol_fields, parse_scontrol_job, parse_sinfo, parse_squeue)
from launcher.errors import RunError
from launcher.spec import Host, SlurmSpec, SshSettings

LOCAL = SlurmSpec(login="local", shared_dir="/shared/me/launch")
REMOTE = SlurmSpec(login="login.example", shared_dir="/shared/me/launch",
                   login_host=Host(name="login", address="login.example", ssh=SshSettings(user="lab")))

SCONTROL_RUNNING = (
    "JobId=12 JobName=resnet UserId=lab(1000) GroupId=lab(1000) MCS_label=N/A Priority=4294901757 Nice=0 "
    "Account=proj1 QOS=normal JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=0:0 RunTime=00:00:12 TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2024-05-02T10:00:00 "
    "EligibleTime=2024-05-02T10:00:00 AccrueTime=2024-05-02T10:00:00 StartTime=2024-05-02T10:00:01 "
    "EndTime=2024-05-02T11:00:01 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2024-05-02T10:00:01 "
    "Scheduler=Main Partition=debug AllocNode:Sid=login:4242 ReqNodeList=(null) ExcNodeList=(null) NodeList=c[1-2] "
    "BatchHost=c1 NumNodes=2 NumCPUs=4 NumTasks=2 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=4,node=2,billing=4 "
    "Socks/Node=* NtasksPerN:B:S:C=1:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) "
    "DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) "
    "Command=/shared/me/launch/runs/resnet-1/job.sh --verbose WorkDir=/shared/me/launch/runs/resnet-1 "
    "StdErr=/shared/me/launch/runs/resnet-1/slurm.out StdIn=/dev/null StdOut=/shared/me/launch/runs/resnet-1/slurm.out "
    "Power= \n"
)
SCONTROL_PENDING = (
    "JobId=13 JobName=resnet UserId=lab(1000) GroupId=lab(1000) MCS_label=N/A Priority=4294901756 Nice=0 Account=(null) "
    "QOS=(null) JobState=PENDING Reason=Resources Dependency=(null) Requeue=1 Restarts=2 BatchFlag=1 Reboot=0 ExitCode=0:0 "
    "RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2024-05-02T10:01:00 Partition=debug "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=(null) NumNodes=4-4 NumCPUs=4 NumTasks=4 Power=\n"
)
SCONTROL_FAILED = (
    "JobId=14 JobName=resnet UserId=lab(1000) GroupId=lab(1000) JobState=FAILED Reason=NonZeroExitCode "
    "Dependency=(null) Requeue=0 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=1:0 RunTime=00:00:03 TimeLimit=00:10:00 "
    "Partition=debug NodeList=gpu[07-08,10] BatchHost=gpu07 NumNodes=3 Power=\n"
)


# ---------------------------------------------------------------------------------------------
# parsers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, names", [
    ("c1", ("c1",)),
    ("c[1-3]", ("c1", "c2", "c3")),
    ("c[1-2,5],gpu7", ("c1", "c2", "c5", "gpu7")),
    ("n[08-11]", ("n08", "n09", "n10", "n11")),
    ("n[098-101]", ("n098", "n099", "n100", "n101")),
    ("rack[1-2]-n[1-2]", ("rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2")),
    ("node-a,node-b", ("node-a", "node-b")),
    ("c[3]", ("c3",)),
    ("gpu[07-08,10]", ("gpu07", "gpu08", "gpu10")),
    ("  c[1-2]\n", ("c1", "c2")),
    ("", ()),
    ("(null)", ()),
    ("None assigned", ()),
])
def test_expand_hostlist(text: str, names: tuple[str, ...]) -> None:
    assert expand_hostlist(text) == names


@pytest.mark.parametrize("text", ["c[1-", "c1-3]", "c[a-b]", "c[3-1]", "c[[1]]", "c1,,c2", "c[1-2] d", "c[1-1000000]"])
def test_expand_hostlist_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError):
        expand_hostlist(text)


@pytest.mark.parametrize("text, state", [("RUNNING", "RUNNING"), ("CANCELLED by 1000", "CANCELLED"), ("COMPLETING+", "COMPLETING"),
                                         ("pending", "PENDING"), (" NODE_FAIL ", "NODE_FAIL"), ("OUT_OF_MEMORY", "OUT_OF_MEMORY")])
def test_base_state(text: str, state: str) -> None:
    assert base_state(text) == state


@pytest.mark.parametrize("output, job_id", [
    ("12\n", "12"),
    ("12;cluster1\n", "12"),
    ("sbatch: warning: can't honor --ntasks-per-node set to 1 which doesn't match the requested tasks 2\n34\n", "34"),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified\n", None),
    ("", None),
])
def test_parse_sbatch(output: str, job_id: str | None) -> None:
    assert parse_sbatch(output) == job_id


def test_parse_squeue_running() -> None:
    assert parse_squeue("12", "RUNNING|None|c[1-2]\n") == JobInfo(
        job_id="12", state="RUNNING", reason=None, nodes=("c1", "c2"), exit_code=None, restarts=0, source="squeue")


def test_parse_squeue_pending() -> None:
    info = parse_squeue("13", "PENDING|Resources|\n")
    assert (info.state, info.reason, info.nodes, info.ended) == ("PENDING", "Resources", (), False)
    info = parse_squeue("13", "PENDING|ReqNodeNotAvail, UnavailableNodes:c3|\n")
    assert info.reason == "ReqNodeNotAvail, UnavailableNodes:c3"


def test_parse_squeue_ended_and_empty() -> None:
    assert parse_squeue("14", "COMPLETED|None|c1\n").ended
    assert parse_squeue("14", "") is None
    assert parse_squeue("14", "slurm_load_jobs error: Invalid job id specified\n") is None


def test_parse_scontrol_fields_keeps_blanks_inside_values() -> None:
    fields = parse_scontrol_fields(SCONTROL_RUNNING)
    assert fields["Command"] == "/shared/me/launch/runs/resnet-1/job.sh --verbose"
    assert fields["AllocNode:Sid"] == "login:4242"
    assert fields["TRES"] == "cpu=4,node=2,billing=4"
    assert fields["ReqB:S:C:T"] == "0:0:*:*"
    assert fields["Power"] == ""
    assert fields["UserId"] == "lab(1000)"


def test_parse_scontrol_job_running() -> None:
    assert parse_scontrol_job("12", SCONTROL_RUNNING) == JobInfo(
        job_id="12", state="RUNNING", reason=None, nodes=("c1", "c2"), exit_code="0:0", restarts=0, source="scontrol")


def test_parse_scontrol_job_pending_requeued() -> None:
    info = parse_scontrol_job("13", SCONTROL_PENDING)
    assert (info.state, info.reason, info.nodes, info.restarts, info.ended) == ("PENDING", "Resources", (), 2, False)


def test_parse_scontrol_job_failed() -> None:
    info = parse_scontrol_job("14", SCONTROL_FAILED)
    assert (info.state, info.reason, info.nodes, info.exit_code, info.ended) == (
        "FAILED", "NonZeroExitCode", ("gpu07", "gpu08", "gpu10"), "1:0", True)


def test_parse_scontrol_job_nothing() -> None:
    assert parse_scontrol_job("12", "") is None
    assert parse_scontrol_job("12", "slurm_load_jobs error: Invalid job id specified\n") is None


def test_parse_scontrol_job_takes_the_record_of_the_id() -> None:
    two = SCONTROL_RUNNING + SCONTROL_FAILED
    assert parse_scontrol_job("14", two).state == "FAILED"
    assert parse_scontrol_job("99", two).state == "RUNNING"


@pytest.mark.parametrize("output, state, exit_code, nodes", [
    ("COMPLETED|0:0|c[1-2]\n", "COMPLETED", "0:0", ("c1", "c2")),
    ("CANCELLED by 1000|0:15|c1\n", "CANCELLED", "0:15", ("c1",)),
    ("FAILED|1:0|c1\n", "FAILED", "1:0", ("c1",)),
    ("TIMEOUT|0:0|c[1-4]\n", "TIMEOUT", "0:0", ("c1", "c2", "c3", "c4")),
    ("NODE_FAIL|0:0|c2\n", "NODE_FAIL", "0:0", ("c2",)),
    ("PENDING|0:0|None assigned\n", "PENDING", "0:0", ()),
    ("OUT_OF_MEMORY|0:125|c1\n", "OUT_OF_MEMORY", "0:125", ("c1",)),
])
def test_parse_sacct(output: str, state: str, exit_code: str, nodes: tuple[str, ...]) -> None:
    info = parse_sacct("12", output)
    assert (info.state, info.exit_code, info.nodes, info.reason, info.restarts, info.source) == (
        state, exit_code, nodes, None, 0, "sacct")


def test_parse_sacct_nothing() -> None:
    assert parse_sacct("12", "") is None
    assert parse_sacct("12", "Slurm accounting storage is disabled\n") is None


def test_parse_sinfo() -> None:
    output = "debug*|up|1/2/0/3\ngpu|up|0/0/2/2\nlong|down|0/4/0/4\nlong|down|1/0/0/1\n"
    assert parse_sinfo(output) == [
        Partition("debug", True, "up", 1, 2, 0, 3),
        Partition("gpu", False, "up", 0, 0, 2, 2),
        Partition("long", False, "down", 1, 4, 0, 5),
    ]
    assert parse_sinfo("") == []
    assert parse_sinfo("sinfo: error: some message\n") == []


def test_one_line() -> None:
    assert one_line("sbatch: error: a\nsbatch: error: b\n") == "sbatch: error: a sbatch: error: b"
    assert one_line("") == "no output"


# ---------------------------------------------------------------------------------------------
# running on this machine
# ---------------------------------------------------------------------------------------------

def test_run_here() -> None:
    ctl = SlurmCtl(LOCAL)
    assert ctl.run(["true"]) == (0, "")
    assert ctl.run(["echo", "a b", "$HOME"]) == (0, "a b $HOME\n")
    assert ctl.run(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, "out\nerr\n")
    assert ctl.run(["cat"], input=b"given\n") == (0, "given\n")
    ctl.close()


def test_run_here_missing_command() -> None:
    code, output = SlurmCtl(LOCAL).run(["no-such-command-for-slurmctl"])
    assert (code, output) == (127, "no-such-command-for-slurmctl: command not found")


def test_run_here_timeout() -> None:
    with pytest.raises(RunError, match=r"took longer than 0.2 s"):
        SlurmCtl(LOCAL).run(["sleep", "5"], timeout=0.2)


# ---------------------------------------------------------------------------------------------
# the commands, with Slurm's answers played back
# ---------------------------------------------------------------------------------------------

class Played(SlurmCtl):
    """A SlurmCtl whose commands answer from a table: argv[0] -> (exit code, output)."""

    def __init__(self, answers: dict[str, tuple[int, str]], slurm: SlurmSpec = LOCAL) -> None:
        super().__init__(slurm)
        self.answers = answers
        self.calls: list[list[str]] = []

    def run(self, argv, timeout=60, input=None):
        self.calls.append(list(argv))
        return self.answers.get(argv[0], (127, f"{argv[0]}: command not found"))


INVALID = (1, "slurm_load_jobs error: Invalid job id specified\n")


def test_submit() -> None:
    ctl = Played({"sbatch": (0, "42\n")})
    assert ctl.submit("/shared/me/launch/runs/r1/job.sh") == "42"
    assert ctl.calls == [["sbatch", "--parsable", "/shared/me/launch/runs/r1/job.sh"]]
    ctl = Played({"sbatch": (0, "43;cluster1\n")})
    assert ctl.submit("/s/job.sh", ["--qos=normal"]) == "43"
    assert ctl.calls == [["sbatch", "--parsable", "--qos=normal", "/s/job.sh"]]


def test_submit_refused() -> None:
    ctl = Played({"sbatch": (1, "sbatch: error: Batch job submission failed: Invalid partition name specified\n")})
    with pytest.raises(RunError) as info:
        ctl.submit("/s/job.sh")
    assert str(info.value) == ("sbatch on this machine refused /s/job.sh: sbatch: error: Batch job submission failed: "
                               "Invalid partition name specified")


def test_job_running_from_squeue() -> None:
    ctl = Played({"squeue": (0, "RUNNING|None|c[1-2]\n")})
    assert ctl.job("12").source == "squeue"
    assert ctl.calls == [["squeue", "-h", "-j", "12", "-t", "all", "-o", "%T|%r|%N"]]


def test_job_ended_in_squeue_takes_scontrol_for_its_exit_code() -> None:
    ctl = Played({"squeue": (0, "FAILED|NonZeroExitCode|gpu[07-08,10]\n"), "scontrol": (0, SCONTROL_FAILED)})
    info = ctl.job("14")
    assert (info.source, info.exit_code) == ("scontrol", "1:0")
    assert ctl.calls[1] == ["scontrol", "show", "job", "-o", "14"]


def test_job_forgotten_by_squeue_known_to_scontrol() -> None:
    ctl = Played({"squeue": INVALID, "scontrol": (0, SCONTROL_PENDING)})
    assert (ctl.job("13").source, ctl.job("13").restarts) == ("scontrol", 2)


def test_job_from_sacct() -> None:
    ctl = Played({"squeue": INVALID, "scontrol": INVALID, "sacct": (0, "COMPLETED|0:0|c1\n")})
    info = ctl.job("12")
    assert (info.source, info.state, info.ended) == ("sacct", "COMPLETED", True)
    assert ctl.calls[2] == ["sacct", "-n", "-P", "-X", "-j", "12", "-o", "State,ExitCode,NodeList"]


def test_job_unknown_everywhere() -> None:
    assert Played({"squeue": (0, ""), "scontrol": INVALID, "sacct": (0, "")}).job("12") is None
    assert Played({"squeue": INVALID, "scontrol": INVALID, "sacct": (1, "Slurm accounting storage is disabled\n")}).job("12") is None
    assert Played({"squeue": INVALID, "scontrol": INVALID, "sacct": (0, "Slurm accounting storage is disabled\n")}).job("12") is None


def test_job_when_slurm_cannot_be_asked() -> None:
    down = (1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n")
    with pytest.raises(RunError) as info:
        Played({"squeue": down, "scontrol": down, "sacct": (1, "sacct: error: Problem talking to the database\n")}).job("12")
    assert str(info.value) == ("cannot ask Slurm on this machine about job 12: `squeue -h -j 12 -t all -o '%T|%r|%N'` "
                               "exited 1: slurm_load_jobs error: Unable to contact slurm controller (connect failure)")
    # the accounting database still answers: its answer counts
    assert Played({"squeue": down, "scontrol": down, "sacct": (0, "TIMEOUT|0:0|c1\n")}).job("12").state == "TIMEOUT"
    with pytest.raises(RunError, match=r"squeue: command not found"):
        Played({}).job("12")


@pytest.mark.parametrize("job_id", ["12; rm -rf /", "", "-1", "abc"])
def test_job_ids_are_checked(job_id: str) -> None:
    with pytest.raises(RunError, match=r"is not a Slurm job id"):
        Played({}).job(job_id)
    with pytest.raises(RunError, match=r"is not a Slurm job id"):
        Played({}).cancel(job_id)


@pytest.mark.parametrize("signal, batch_only, argv", [
    (None, False, ["scancel", "12"]),
    (None, True, ["scancel", "--batch", "12"]),
    ("TERM", False, ["scancel", "--signal=TERM", "--full", "12"]),
    ("USR1", True, ["scancel", "--signal=USR1", "--batch", "12"]),
    ("SIGINT", False, ["scancel", "--signal=SIGINT", "--full", "12"]),
])
def test_cancel(signal: str | None, batch_only: bool, argv: list[str]) -> None:
    ctl = Played({"scancel": (0, "")})
    ctl.cancel("12", signal, batch_only)
    assert ctl.calls == [argv]


def test_cancel_of_an_ended_job_is_no_error() -> None:
    Played({"scancel": (0, "scancel: error: Kill job error on job id 12: Job/step already completing or completed\n")}).cancel("12")
    Played({"scancel": (1, "scancel: error: Kill job error on job id 12: Invalid job id specified\n")}).cancel("12")


def test_cancel_failing() -> None:
    with pytest.raises(RunError, match=r"^scancel on this machine failed for job 12: scancel: error: Unable to contact"):
        Played({"scancel": (1, "scancel: error: Unable to contact slurm controller (connect failure)\n")}).cancel("12")
    with pytest.raises(RunError, match=r"is not a signal name"):
        Played({"scancel": (0, "")}).cancel("12", "TERM; reboot")


def test_partitions() -> None:
    ctl = Played({"sinfo": (0, "debug*|up|1/2/0/3\ngpu|up|0/0/2/2\n")})
    assert ctl.partitions() == {"debug": (2, 3), "gpu": (0, 2)}
    assert ctl.default_partition() == "debug"
    assert ctl.calls[0] == ["sinfo", "-h", "-o", "%P|%a|%F"]
    assert Played({"sinfo": (0, "gpu|up|0/0/2/2\n")}).default_partition() is None
    with pytest.raises(RunError, match=r"^sinfo on this machine failed: sinfo: command not found$"):
        Played({}).partitions()


def test_hostnames_falls_back_to_scontrol() -> None:
    ctl = Played({"scontrol": (0, "c1\nc2\n")})
    assert ctl.hostnames("c[1-2]") == ("c1", "c2") and ctl.calls == []
    assert ctl.hostnames("c[1-2]x]") == ("c1", "c2")
    assert ctl.calls == [["scontrol", "show", "hostnames", "c[1-2]x]"]]


# ---------------------------------------------------------------------------------------------
# the login host over SSH (a stand-in connection)
# ---------------------------------------------------------------------------------------------

class FakeConn:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_remote_run_goes_through_one_lazy_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Host] = []
    sent: list[tuple[object, list[str], bytes, float]] = []

    def factory(host: Host) -> FakeConn:
        made.append(host)
        return FakeConn()

    def pipe_into(conn, argv, data, timeout):
        sent.append((conn, list(argv), data, timeout))
        return 0, shlex.join(argv) + "\n"

    import launcher.hosts.ssh as ssh
    monkeypatch.setattr(ssh, "pipe_into", pipe_into)
    ctl = SlurmCtl(REMOTE, conn_factory=factory)
    assert made == []  # nothing until the first command
    code, output = ctl.run(["squeue", "-h", "-o", "%T|%r|%N"], timeout=5)
    assert (code, output) == (0, "squeue -h -o '%T|%r|%N'\n")
    ctl.run(["cat"], input=b"x")
    assert made == [REMOTE.login_host]
    assert [s[1:] for s in sent] == [(["squeue", "-h", "-o", "%T|%r|%N"], b"", 5), (["cat"], b"x", 60)]
    conn = sent[0][0]
    assert sent[1][0] is conn
    ctl.close()
    assert conn.closed
    ctl.run(["true"])
    assert len(made) == 2  # a new connection after close
    ctl.close()


def test_remote_submit_reads_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import launcher.hosts.ssh as ssh
    monkeypatch.setattr(ssh, "pipe_into", lambda conn, argv, data, timeout: (0, "77\n"))
    ctl = SlurmCtl(REMOTE, conn_factory=lambda host: FakeConn())
    assert ctl.submit("/shared/me/launch/runs/r/job.sh") == "77"
    monkeypatch.setattr(ssh, "pipe_into", lambda conn, argv, data, timeout: (1, "sbatch: error: invalid account\n"))
    with pytest.raises(RunError, match=r"^sbatch on login host login.example refused /s/job.sh: sbatch: error: invalid account$"):
        ctl.submit("/s/job.sh")


def test_ended_states() -> None:
    assert slurmctl.ENDED_STATES >= {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL"}
    for state in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED", "CONFIGURING"):
        assert not JobInfo("1", state, None, (), None, 0, "squeue").ended
