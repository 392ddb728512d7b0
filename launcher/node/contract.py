"""What the launcher and every node and rank agree on: variable names, file names, line formats.

Standard library only, and imported by both sides: the launcher (planning, the run directory,
reading what nodes left) and the code that ships with the ranks (the rank wrapper, the node
supervisor, the metrics writer, the startup hook). Nothing else spells these names. It imports
nothing at load time: the startup hook loads it into every Python process of a rank.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# ---- environment variables the launcher sets for every rank (a job's `env` cannot set them)
RESERVED_PREFIX = "LAUNCH_"
RUN_ID = "LAUNCH_RUN_ID"
HOST = "LAUNCH_HOST"
BACKEND = "LAUNCH_BACKEND"
LOG_DIR = "LAUNCH_LOG_DIR"
METRICS_DIR = "LAUNCH_METRICS_DIR"
CHECKPOINT_DIR = "LAUNCH_CHECKPOINT_DIR"
SECRETS_FILE_VAR = "LAUNCH_SECRETS_FILE"  # read and removed by the rank wrapper, never seen by the rank
ATTEMPT = "LAUNCH_ATTEMPT"  # set by the node supervisor: 0, then 1, 2, ... after each restart of the group
PREEMPT_SIGNAL = "LAUNCH_PREEMPT_SIGNAL"  # where a scheduler warns of its time limit or a preemption: the signal's name
PREEMPTED = "LAUNCH_PREEMPTED"  # "1" once that warning came, before the job had a handler of its own
STEP_METRICS_PID = "LAUNCH_STEP_METRICS_PID"  # set in a rank's Python by the step-metrics hook: the process that measures

# ---- the layout of a run's folder: the run directory here, a node's folder on a host, the mount
LOGS = "logs"
METRICS = "metrics"
SECRETS_FILE = "secrets.env"  # in a node's folder; read by the rank wrapper, never collected
LEASE_FILE = "lease"  # in a node's folder: its mtime is renewed by an attached launcher
AGENT_LOG = "torchrun.log"  # torchrun's own output on a host
NODE_STATUS = "node.status.json"  # the node supervisor's state: running, then how the node ended
NODE_OUTPUT = "node.out"  # everything the node printed, prefixed lines included (for `logs --follow`)
# a run's own folder on each host (`launcher.node.workspace`), never shared with another run
STATE_CHECKPOINTS = "checkpoints"  # LAUNCH_CHECKPOINT_DIR
STATE_WORK = "work"  # the ranks' working directory: the job's code, then what the run writes
OUTPUTS = "outputs"  # in the run directory: outputs/<host>/..., what the ranks wrote in their working directory

# ---- a node's states (NODE_STATUS "state"), and why a supervisor stopped its node ("cause")
RUNNING, SUCCEEDED, FAILED, STOPPED = "running", "succeeded", "failed", "stopped"
STOPPED_BY_SIGNAL = "signal"  # `launch stop`, Ctrl-C in the launcher, docker kill
STOPPED_BY_LEASE = "lease"  # the attached launcher stopped renewing the lease
STOPPED_FOR_PEER_FAILED = "peer-failed"  # another node failed: fail-fast
STOPPED_FOR_PEER_LOST = "peer-lost"  # another node stopped answering
STOPPED_BY_TIMEOUT = "timeout"  # a detached run went past the job's timeout
STOPPED_BY_PREEMPTION = "preempted"  # the scheduler's warning signal (its time limit, a preemption) came
STOP_CAUSES = (STOPPED_BY_SIGNAL, STOPPED_BY_LEASE, STOPPED_FOR_PEER_FAILED, STOPPED_FOR_PEER_LOST, STOPPED_BY_TIMEOUT,
               STOPPED_BY_PREEMPTION)


def node_dirs(root: str, host: str) -> tuple[str, str]:
    """`host`'s log folder and the metrics folder of a run rooted at `root`."""
    return f"{root}/{LOGS}/{host}", f"{root}/{METRICS}"


def rank_log(rank: int | str, attempt: int | None = None) -> str:
    """A rank's log; with `attempt`, the kept log of an earlier attempt of a restarted run."""
    return f"rank{rank}.log" if attempt is None else f"rank{rank}.attempt{attempt}.log"


def rank_status(rank: int | str, attempt: int | None = None) -> str:
    return f"rank{rank}.status.json" if attempt is None else f"rank{rank}.attempt{attempt}.status.json"


def metrics_file(rank: int | str) -> str:
    """Step records the job writes itself (README "Metrics")."""
    return f"rank{rank}.jsonl"


def auto_metrics_file(rank: int | str) -> str:
    """Step records launch measures in the rank's Python (optimizer steps, DataLoader batches)."""
    return f"rank{rank}.auto.jsonl"


def parse_rank_file(name: str, suffix: str) -> tuple[int, int | None] | None:
    """(rank, attempt) of `rank<R>[.attempt<K>]<suffix>`; attempt None for the latest; else None."""
    if not name.startswith("rank") or not name.endswith(suffix):
        return None
    stem = name[len("rank") : len(name) - len(suffix)]
    rank, _, attempt = stem.partition(".attempt")
    if not rank.isdigit() or (attempt and not attempt.isdigit()) or (_ and not attempt):
        return None
    return int(rank), int(attempt) if attempt else None


# ---- lines: every rank line reaches the console as `[host/rank] text`, torchrun's as `[host] text`
LINE_MAX = 1 << 16  # a longer line (output with no line break for megabytes) is passed on in pieces of this size

def rank_prefix(host: str, rank: int | str) -> bytes:
    return f"[{host}/{rank}] ".encode()


def agent_prefix(host: str) -> bytes:
    return f"[{host}] ".encode()


def split_rank_line(line: bytes, host: str) -> tuple[int, bytes] | None:
    """(rank, text) of a line `[host/rank] text` from `host`; None for any other line."""
    start = f"[{host}/".encode()
    if not line.startswith(start):
        return None
    rank, sep, text = line[len(start) :].partition(b"] ")
    return (int(rank), text) if sep and rank.isdigit() else None


# Events: one line each, written by the rank wrapper and the supervisor into the node's output
# stream, read by the launcher (live console, `logs --follow`) and never shown as they are.
EVENT_MARK = b"\x1elaunch-event "
# The kinds (the line's "event" field), each with the fields it carries. The supervisor's events
# all carry `host` and `node_rank` besides those named.
EVENT_RANK_START = "rank-start"  # a rank's command is starting (rank wrapper): host, rank, attempt
EVENT_RANK_END = "rank-end"  # a rank's command ended (rank wrapper): host, rank, attempt, exit_code, stopped (by a signal sent to it)
EVENT_ATTEMPT = "attempt"  # the group restarted and this node starts another attempt: attempt, attempts (in all), reason
EVENT_PROGRESS = "progress"  # what the ranks' metrics say, by rank as text: ranks {rank: {step, samples_per_s, step_s, total_steps}}
EVENT_KILLED = "killed"  # processes outlived the grace period and were SIGKILLed: grace, processes [{pid, rank, command}]
EVENT_STOPPING = "stopping"  # the node is stopping its ranks: cause (one of STOP_CAUSES), reason, lost (a host, or null)
EVENT_NODE_END = "node-end"  # the node's part is over, its last line: state, exit_code, cause, reason, lost, restarts
EVENTS = (EVENT_RANK_START, EVENT_RANK_END, EVENT_ATTEMPT, EVENT_PROGRESS, EVENT_KILLED, EVENT_STOPPING, EVENT_NODE_END)


def event_line(kind: str, **fields: Any) -> bytes:
    import json

    return EVENT_MARK + json.dumps({"event": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def parse_event(line: bytes) -> dict[str, Any] | None:
    if not line.startswith(EVENT_MARK):
        return None
    import json

    try:
        event = json.loads(line[len(EVENT_MARK) :])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


# ---- secrets: `NAME=value` lines, one per secret (values are one line; the spec checks that)
def format_secrets(values: dict[str, str]) -> bytes:
    return "".join(f"{name}={value}\n" for name, value in values.items()).encode()


def parse_secrets(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            found[name] = value
    return found


def replace_file(path: str, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` whole or not at all: a temporary file in the same folder
    (`.<name>.<pid>.<random>.tmp`), synced to disk, then renamed over `path`. `mode`: the new
    file's permissions (None: the default, as for `open`). Raises OSError (a full or read-only
    disk), and then leaves `path` as it was and no temporary file behind."""
    import os

    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_file(path: str, record: dict[str, Any]) -> bool:
    """Write a state file whole or not at all (`replace_file`); False, with no temporary file
    left, when the disk is full or read-only."""
    import json

    try:
        replace_file(path, json.dumps(record).encode())
        return True
    except OSError:
        return False
