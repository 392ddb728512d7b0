"""Runs one rank's command under torchrun: its whole output to the rank's log, prefixed lines to stdout.

torchrun starts `python -m launcher.node.rankexec COMMAND...` once per rank. Like the rest of
`launcher.node` it uses only the standard library and reads its settings from the environment
(names in `contract`), so it ships into images and onto hosts as it is. It:
- merges the command's stdout and stderr, writes every line unchanged to `$LAUNCH_LOG_DIR/rank$RANK.log`
  and `[$LAUNCH_HOST/$RANK] line` to its own stdout, one write per line so ranks never interleave;
- forwards SIGTERM/SIGINT/SIGHUP to the command, and makes sure the command dies with it;
- writes `$LAUNCH_LOG_DIR/rank$RANK.status.json` (exit code, times) when the command ends;
- after a restart of the group (attempt K > 0, `contract.ATTEMPT`), first keeps the earlier attempt's log and status as
  `rank$RANK.attempt<K-1>.*`, so every attempt's output is kept;
- says when the rank starts and ends as event lines (`contract.event_line`) for the launcher;
- puts `startup/` first on the command's PYTHONPATH, so that every Python process of the rank
  measures its optimizer steps into `rank$RANK.auto.jsonl` (`stepmetrics`) for jobs that write no metrics;
- exits with the command's exit code (128 + N when signal N ended it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from . import contract
from .procs import die_with_parent

STARTUP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "startup")  # holds a sitecustomize.py


def _write_line(stream, data: bytes) -> bool:
    try:
        stream.write(data)
        stream.flush()
        return True
    except (BrokenPipeError, OSError):
        return False


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m launcher.node.rankexec COMMAND [ARG ...]", file=sys.stderr)
        return 2
    rank = os.environ.get("RANK", "0")
    host = os.environ.get(contract.HOST, "local")
    log_dir = os.environ.get(contract.LOG_DIR)  # unset outside a launch: no files, output only
    attempt = _begin(log_dir, rank, host)

    parent = os.getppid()
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        return 128 + signal.SIGTERM

    stopped_by: list[int] = []
    started = time.time()
    try:
        child = subprocess.Popen(
            argv,
            env=_child_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: die_with_parent(signal.SIGKILL),
        )
    except OSError as exc:
        _not_started(log_dir, rank, host, f"cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
        _write_status(log_dir, rank, host, 127, None, started, False, attempt)
        return 127

    def forward(signum, _frame):
        stopped_by.append(signum)
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    warning = os.environ.get(contract.PREEMPT_SIGNAL, "")
    if warning.startswith("SIG") and hasattr(signal, warning):  # a scheduler's warning: passed on, not a stop
        signal.signal(getattr(signal, warning), lambda signum, _frame: _send(child, signum))

    _pass_lines(child, log_dir, rank, contract.rank_prefix(host, rank))
    code = child.wait()
    signum = -code if code < 0 else None
    exit_code = 128 + signum if signum else code
    _write_status(log_dir, rank, host, exit_code, signum, started, bool(stopped_by), attempt)
    if log_dir:
        _write_line(sys.stdout.buffer, contract.event_line(contract.EVENT_RANK_END, host=host, rank=int(rank), attempt=attempt,
                                                           exit_code=exit_code, stopped=bool(stopped_by)))
    return exit_code


def _send(child: subprocess.Popen, signum: int) -> None:
    try:
        child.send_signal(signum)
    except ProcessLookupError:
        pass


def _begin(log_dir: str | None, rank: str, host: str) -> int:
    """Make the rank's folders, keep the earlier attempt's files, say the rank starts; its attempt."""
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    if os.environ.get(contract.METRICS_DIR):
        os.makedirs(os.environ[contract.METRICS_DIR], exist_ok=True)
    attempt = int(os.environ.get(contract.ATTEMPT, "0") or 0)
    if log_dir:
        if attempt > 0:
            _keep_attempt(log_dir, rank, attempt - 1)
        _write_line(sys.stdout.buffer, contract.event_line(contract.EVENT_RANK_START, host=host, rank=int(rank), attempt=attempt))
    return attempt


def _not_started(log_dir: str | None, rank: str, host: str, message: bytes) -> None:
    """Why the command did not start: to the rank's log and the console."""
    if log_dir:
        try:
            with open(os.path.join(log_dir, contract.rank_log(rank)), "ab") as log:
                log.write(message)
        except OSError:
            pass
    _write_line(sys.stdout.buffer, contract.rank_prefix(host, rank) + message)


def _pass_lines(child: subprocess.Popen, log_dir: str | None, rank: str, prefix: bytes) -> None:
    """Every line of the command to the rank's log as it is and to stdout prefixed, until it closes
    its output; the log is given up (once said) when it cannot be written, stdout when it is gone."""
    out = sys.stdout.buffer
    console_ok = True
    log = _open_log(log_dir, rank, out, prefix)
    assert child.stdout is not None
    for line in iter(lambda: child.stdout.readline(contract.LINE_MAX), b""):
        if log is not None:
            try:
                log.write(line)
            except OSError as exc:  # a full or read-only disk: the rank goes on, its lines still reach the console
                _write_line(out, prefix + f"launch: cannot write this rank's log any more ({exc.strerror or exc}); "
                            "its lines go on to the console only\n".encode())
                log.close()
                log = None
        if not line.endswith(b"\n"):
            line += b"\n"
        if console_ok:
            console_ok = _write_line(out, prefix + line)
    if log is not None:
        log.close()


def _open_log(log_dir: str | None, rank: str, out, prefix: bytes):
    if not log_dir:
        return None
    try:
        return open(os.path.join(log_dir, contract.rank_log(rank)), "ab", buffering=0)
    except OSError as exc:
        _write_line(out, prefix + f"launch: cannot open this rank's log ({exc.strerror or exc}); its lines go to the console only\n".encode())
        return None


def _keep_attempt(log_dir: str, rank: str, attempt: int) -> None:
    """Move the last attempt's log and status aside (a restart must not overwrite them)."""
    for latest, kept in ((contract.rank_log(rank), contract.rank_log(rank, attempt)),
                         (contract.rank_status(rank), contract.rank_status(rank, attempt))):
        try:
            os.replace(os.path.join(log_dir, latest), os.path.join(log_dir, kept))
        except FileNotFoundError:
            pass


def _child_environment() -> dict[str, str]:
    """This process's environment plus the secrets in $LAUNCH_SECRETS_FILE, and, under a launch
    ($LAUNCH_METRICS_DIR set), `STARTUP_DIR` first on PYTHONPATH.

    Secrets reach the rank this way so that they are in no command line and no container's config.
    """
    env = dict(os.environ)
    path = env.pop(contract.SECRETS_FILE_VAR, None)
    if path:
        with open(path, encoding="utf-8") as fh:
            env.update(contract.parse_secrets(fh.read()))
    if env.get(contract.METRICS_DIR):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (STARTUP_DIR, env.get("PYTHONPATH")) if p)
    return env


def _write_status(log_dir: str | None, rank: str, host: str, exit_code: int, signum: int | None, started: float,
                  stopped: bool, attempt: int) -> None:
    if not log_dir:
        return
    ended = time.time()
    record = {
        "rank": int(rank),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "host": host,
        "exit_code": exit_code,
        "signal": signum,
        "stopped": stopped,  # ended by a signal sent to it (the run was being stopped)
        "attempt": attempt,  # 0, or the number of restarts before this attempt
        "start_time": started,
        "end_time": ended,
        "wall_time_s": round(ended - started, 6),
    }
    contract.write_json_file(os.path.join(log_dir, contract.rank_status(rank)), record)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
