"""Slurm's commands (sbatch, squeue, scontrol, sacct, scancel, sinfo), run on the login side of the
inventory's `slurm:` block: this machine, or the login host over one SSH connection.

What each command prints is read by a pure function (`parse_*`), so the reading is tested without a
Slurm cluster. A job is looked up where Slurm still knows it: squeue while it is queued or running,
`scontrol show job` a while after it ended (MinJobAge), sacct after that where accounting is on.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import RunError
from ..spec import Host, SlurmSpec

# states after which the job does nothing more (COMPLETING still runs its epilog; REQUEUED and
# SPECIAL_EXIT go back to the queue)
ENDED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL",
                          "DEADLINE", "OUT_OF_MEMORY", "REVOKED"})
_UNKNOWN_JOB = re.compile(r"invalid job ?id", re.IGNORECASE)  # squeue/scontrol/scancel for a job Slurm forgot
_GONE_ALREADY = re.compile(r"already completing or completed|invalid job ?id", re.IGNORECASE)
_ACCOUNTING_OFF = re.compile(r"accounting storage is disabled", re.IGNORECASE)
_JOB_ID = re.compile(r"[0-9]+(?:_[0-9]+|\+[0-9]+)?")
_SIGNAL = re.compile(r"(?:SIG)?[A-Z][A-Z0-9+-]*|[0-9]{1,2}")
_NO_NODES = {"", "(null)", "None assigned", "n/a", "N/A"}
SQUEUE_FORMAT = "%T|%r|%N"
SACCT_FIELDS = "State,ExitCode,NodeList"
SINFO_FORMAT = "%P|%a|%F"


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str  # as Slurm says it, base state only: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    reason: str | None  # why it waits or ended: Resources, Priority, ... (None for Slurm's "None")
    nodes: tuple[str, ...]  # expanded node names; () while it has none
    exit_code: str | None  # "0:0", "1:0", "0:15" (exit status:signal); None where the source does not say
    restarts: int  # how often Slurm requeued it (scontrol's Restarts=); 0 where the source does not say
    source: str  # "squeue" | "scontrol" | "sacct"

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


# ---------------------------------------------------------------------------------------------
# reading the commands' output (pure)
# ---------------------------------------------------------------------------------------------

def base_state(text: str) -> str:
    """`CANCELLED by 1000` -> CANCELLED, `COMPLETING+` -> COMPLETING, `running` -> RUNNING."""
    words = re.split(r"[+\s]", text.strip(), maxsplit=1)
    return words[0].upper()


def expand_hostlist(text: str) -> tuple[str, ...]:
    """Slurm's compact node list, expanded: `c[1-3,07],gpu5` -> c1, c2, c3, c07, gpu5; ranges keep their
    zero padding (`n[01-03]`), several brackets multiply (`r[1-2]n[1-2]`). ValueError for what it cannot
    read; () for no nodes (`(null)`, `None assigned`, nothing)."""
    text = text.strip()
    if text in _NO_NODES:
        return ()
    names: list[str] = []
    for part in _top_level_split(text):
        names.extend(_expand_one(part))
    return tuple(names)


def _top_level_split(text: str) -> list[str]:
    """Split at commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"nested brackets in {text!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced brackets in {text!r}")
    parts.append(text[start:])
    if any(not p for p in parts):
        raise ValueError(f"an empty name in {text!r}")
    return parts


def _expand_one(part: str) -> list[str]:
    pieces = re.split(r"\[([^\]]*)\]", part)  # text, range, text, range, ..., text
    choices: list[list[str]] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if re.search(r"[\s\[\]]", piece):
                raise ValueError(f"cannot read node name {part!r}")
            choices.append([piece])
        else:
            choices.append(_expand_range(piece, part))
    return ["".join(combo) for combo in itertools.product(*choices)]


def _expand_range(spec: str, part: str) -> list[str]:
    values: list[str] = []
    for item in spec.split(","):
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", item.strip())
        if not match:
            raise ValueError(f"cannot read range [{spec}] in {part!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low) or int(high) - int(low) > 100_000:
            raise ValueError(f"cannot read range [{spec}] in {part!r}")
        width = len(low) if low.startswith("0") and len(low) > 1 else 0
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values


def parse_sbatch(output: str) -> str | None:
    """The job id in `sbatch --parsable`'s answer (`12` or `12;cluster`), past any warning lines; None
    when there is none."""
    for line in reversed(output.strip().splitlines()):
        head = line.strip().split(";", 1)[0]
        if re.fullmatch(r"[0-9]+", head):
            return head
    return None


def parse_squeue(job_id: str, output: str) -> JobInfo | None:
    """`squeue -h -j ID -t all -o '%T|%r|%N'`: `RUNNING|None|c[1-2]`, `PENDING|Resources|`; None when
    it lists nothing."""
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 3 or not fields[0]:
            continue
        state, reason, nodelist = fields
        return JobInfo(job_id=job_id, state=base_state(state), reason=_reason(reason), nodes=expand_hostlist(nodelist),
                       exit_code=None, restarts=0, source="squeue")
    return None


def parse_scontrol_fields(line: str) -> dict[str, str]:
    """One record of `scontrol show ... -o`: `Key=Value` pairs split at the blanks before each key (a
    value may hold blanks, e.g. Command= with arguments)."""
    fields: dict[str, str] = {}
    for pair in re.split(r"\s+(?=[A-Za-z][A-Za-z0-9_:/.]*=)", line.strip()):
        key, sep, value = pair.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


def parse_scontrol_job(job_id: str, output: str) -> JobInfo | None:
    """`scontrol show job -o ID`: one line per job (an array job: one per task; the one whose JobId is
    `job_id` is taken, else the first)."""
    records = [parse_scontrol_fields(line) for line in output.splitlines() if line.strip().startswith("JobId=")]
    if not records:
        return None
    fields = next((r for r in records if r.get("JobId") == job_id), records[0])
    if "JobState" not in fields:
        return None
    restarts = fields.get("Restarts", "0")
    return JobInfo(job_id=job_id, state=base_state(fields["JobState"]), reason=_reason(fields.get("Reason", "")),
                   nodes=expand_hostlist(fields.get("NodeList", "")), exit_code=_exit_code(fields.get("ExitCode", "")),
                   restarts=int(restarts) if restarts.isdigit() else 0, source="scontrol")


def parse_sacct(job_id: str, output: str) -> JobInfo | None:
    """`sacct -n -P -X -j ID -o State,ExitCode,NodeList`: `COMPLETED|0:0|c[1-2]`, `CANCELLED by 1000|0:15|c1`,
    `PENDING|0:0|None assigned`; None when it lists nothing."""
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 3 or not fields[0]:
            continue
        state, exit_code, nodelist = fields
        return JobInfo(job_id=job_id, state=base_state(state), reason=None, nodes=expand_hostlist(nodelist),
                       exit_code=_exit_code(exit_code), restarts=0, source="sacct")
    return None


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    available: str  # up, down, drain, inact
    allocated: int
    idle: int
    other: int
    total: int


def parse_sinfo(output: str) -> list[Partition]:
    """`sinfo -h -o '%P|%a|%F'`: `debug*|up|1/2/0/3` (nodes allocated/idle/other/total; `*` marks the
    default partition). A partition listed on several lines is added up."""
    found: dict[str, Partition] = {}
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 3:
            continue
        name, available, counts = fields
        numbers = counts.split("/")
        if not name or len(numbers) != 4 or not all(n.isdigit() for n in numbers):
            continue
        default = name.endswith("*")
        name = name.rstrip("*")
        allocated, idle, other, total = (int(n) for n in numbers)
        if name in found:
            seen = found[name]
            found[name] = Partition(name, seen.default or default, seen.available, seen.allocated + allocated,
                                    seen.idle + idle, seen.other + other, seen.total + total)
        else:
            found[name] = Partition(name, default, available, allocated, idle, other, total)
    return list(found.values())


def _reason(text: str) -> str | None:
    text = text.strip()
    return None if text in ("", "None", "(null)") else text


def _exit_code(text: str) -> str | None:
    text = text.strip()
    return text if re.fullmatch(r"[0-9]+:[0-9]+", text) else None


def one_line(output: str) -> str:
    """A command's output as one line for an error message."""
    return " ".join(line.strip() for line in output.strip().splitlines() if line.strip()) or "no output"


# ---------------------------------------------------------------------------------------------
# running them
# ---------------------------------------------------------------------------------------------

class SlurmCtl:
    """Slurm's commands on the login side: this machine (a subprocess each), or the login host over one
    SSH connection, opened on first use and opened again when it drops."""

    def __init__(self, slurm: SlurmSpec, conn_factory: Callable[[Host], object] | None = None) -> None:
        self.slurm = slurm
        self._conn_factory = conn_factory
        self._conn = None

    @property
    def where(self) -> str:
        return "this machine" if self.slurm.is_local else f"login host {self.slurm.login}"

    def run(self, argv: list[str], timeout: float = 60, input: bytes | None = None) -> tuple[int, str]:
        """A command's exit code and its output (stdout and stderr merged, as text). A command that is not
        there exits 127, as a shell says; RunError when it takes longer than `timeout` seconds or the
        login host cannot be reached."""
        if self.slurm.is_local:
            return _run_here(argv, timeout, input)
        from ..hosts.ssh import pipe_into  # the SSH library only when the login side is another host

        return pipe_into(self._connection(), argv, input or b"", timeout)  # quotes argv with shlex, once

    def connection(self):
        """The SSH connection to the login host (opened again when it dropped)."""
        return self._connection()

    def _connection(self):
        if self._conn is not None and not _alive(self._conn):
            self.close()
        if self._conn is None:
            from ..hosts.ssh import connect

            assert self.slurm.login_host is not None
            self._conn = (self._conn_factory or connect)(self.slurm.login_host)
        return self._conn

    def submit(self, script_path: str, extra: Sequence[str] = (), env: Sequence[str] = ()) -> str:
        """`sbatch --parsable [extra] SCRIPT`: the new job's id. The inventory's partition, account and
        sbatch_args are not added here: the script's #SBATCH lines or `extra` carry them."""
        argv = ["sbatch", "--parsable", *extra, script_path]
        if env:  # `env` arguments: -u NAME drops a variable from the job's environment, NAME=VALUE sets one
            argv = ["env", *env, *argv]
        code, output = self.run(argv)
        job_id = parse_sbatch(output) if code == 0 else None
        if job_id is None:
            raise RunError(f"sbatch on {self.where} refused {script_path}: {one_line(output)}")
        return job_id

    def job(self, job_id: str) -> JobInfo | None:
        """Where the job stands: squeue while Slurm holds it, then `scontrol show job` (also for the exit
        code of a job squeue shows ended), then sacct where accounting is on; None when none knows it.
        RunError when Slurm cannot be asked (no controller, no commands) and nothing else answered."""
        _check_job_id(job_id)
        problems: list[str] = []
        queued = self._ask(["squeue", "-h", "-j", job_id, "-t", "all", "-o", SQUEUE_FORMAT], parse_squeue, job_id, problems)
        if queued is not None and not queued.ended:
            return queued
        shown = self._ask(["scontrol", "show", "job", "-o", job_id], parse_scontrol_job, job_id, problems)
        if shown is not None:
            return shown
        if queued is not None:
            return queued
        code, output = self.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", SACCT_FIELDS])
        if code == 0 and not _ACCOUNTING_OFF.search(output):
            accounted = parse_sacct(job_id, output)
            if accounted is not None:
                return accounted
        if problems:
            raise RunError(f"cannot ask Slurm on {self.where} about job {job_id}: {problems[0]}")
        return None

    def _ask(self, argv: list[str], parse: Callable[[str, str], JobInfo | None], job_id: str,
             problems: list[str]) -> JobInfo | None:
        code, output = self.run(argv)
        if code == 0:
            return parse(job_id, output)
        if not _UNKNOWN_JOB.search(output):
            problems.append(f"`{shlex.join(argv)}` exited {code}: {one_line(output)}")
        return None

    def cancel(self, job_id: str, signal: str | None = None, batch_only: bool = False) -> None:
        """`scancel [--signal=S] [--batch|--full] ID`: with a signal, to the batch script only (`batch_only`)
        or to it and every step; without one, the job is cancelled. A job that already ended is no error."""
        _check_job_id(job_id)
        argv = ["scancel"]
        if signal is not None:
            if not _SIGNAL.fullmatch(signal):
                raise RunError(f"scancel: {signal!r} is not a signal name such as TERM or USR1")
            argv += [f"--signal={signal}", "--batch" if batch_only else "--full"]
        elif batch_only:
            argv.append("--batch")
        code, output = self.run([*argv, job_id])
        if code != 0 and not _GONE_ALREADY.search(output):
            raise RunError(f"scancel on {self.where} failed for job {job_id}: {one_line(output)}")

    def partitions(self) -> dict[str, tuple[int, int]]:
        """Each partition this user sees: (idle nodes, all nodes)."""
        return {p.name: (p.idle, p.total) for p in self._sinfo()}

    def default_partition(self) -> str | None:
        return next((p.name for p in self._sinfo() if p.default), None)

    def _sinfo(self) -> list[Partition]:
        argv = ["sinfo", "-h", "-o", SINFO_FORMAT]
        code, output = self.run(argv)
        if code != 0:
            raise RunError(f"sinfo on {self.where} failed: {one_line(output)}")
        return parse_sinfo(output)

    def hostnames(self, nodelist: str) -> tuple[str, ...]:
        """A node list expanded: here where it can be read, else by `scontrol show hostnames`."""
        try:
            return expand_hostlist(nodelist)
        except ValueError:
            pass
        code, output = self.run(["scontrol", "show", "hostnames", nodelist])
        if code != 0:
            raise RunError(f"scontrol show hostnames on {self.where} failed: {one_line(output)}")
        return tuple(line.strip() for line in output.splitlines() if line.strip())

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a dead connection: nothing to tell
                pass


def _run_here(argv: list[str], timeout: float, data: bytes | None) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, input=data or b"", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except PermissionError as exc:
        return 126, f"{argv[0]}: {exc.strerror}"
    except subprocess.TimeoutExpired:
        raise RunError(f"`{shlex.join(argv)[:80]}` took longer than {timeout:g} s") from None
    return done.returncode, done.stdout.decode(errors="replace")


def _alive(conn) -> bool:
    """False for a Fabric connection whose transport has dropped; true for what cannot be told."""
    client = getattr(conn, "client", None)
    if client is None or not hasattr(client, "get_transport"):
        return True
    transport = client.get_transport()
    return transport is not None and transport.is_active()


def _check_job_id(job_id: str) -> None:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise RunError(f"{job_id!r} is not a Slurm job id")
