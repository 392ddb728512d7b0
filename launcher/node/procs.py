"""Linux process helpers for the node side (standard library only): parent-death signals, the
subreaper flag, a process's descendants, whether a pid is still what we think it is, the one
way processes are stopped (`terminate`: SIGTERM, a grace period, SIGKILL), and a quick end of
one's own (`end_now`)."""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable, NoReturn

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


try:  # looked up once, here: a child between fork and exec (preexec_fn) only calls it
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: nothing to ask for
    _PRCTL = None


def _prctl(option: int, value: int) -> None:
    if _PRCTL is not None:
        _PRCTL(option, value, 0, 0, 0)


def die_with_parent(sig: int) -> None:
    """Ask Linux to send `sig` to this process when its parent exits."""
    _prctl(_PR_SET_PDEATHSIG, sig)


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process, so `descendants` still finds them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...]; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != b"Z"


def descendants(root: int) -> list[int]:
    """Every live process below `root`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None and fields[0] != b"Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_after_grace(kill: Callable[[], None], alive: Callable[[], bool], grace_s: float, poll_s: float = 0.05) -> bool:
    """Wait up to `grace_s` for `alive()` to turn false, then call `kill()` if it has not: the second
    half of `terminate`, for a caller that sent SIGTERM itself (or sends none). True when it killed."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not alive():
            return False
        time.sleep(poll_s)
    if not alive():
        return False
    kill()
    return True


def terminate(signal_fn: Callable[[int], None], alive: Callable[[], bool], grace_s: float, poll_s: float = 0.05) -> bool:
    """SIGTERM through `signal_fn`, up to `grace_s` for `alive()` to turn false, then SIGKILL through
    `signal_fn` if it has not. True when it had to kill."""
    signal_fn(signal.SIGTERM)
    return kill_after_grace(lambda: signal_fn(signal.SIGKILL), alive, grace_s, poll_s)


def describe_process(pid: int) -> dict:
    """{"pid", "rank" (its RANK, when it is a rank's process), "command"}: for saying what was killed."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            command = b" ".join(fh.read().rstrip(b"\0").split(b"\0")).decode(errors="replace")
    except OSError:
        command = ""
    rank = None
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(b"RANK=") and item[5:].isdigit():
                    rank = int(item[5:])
    except OSError:
        pass
    return {"pid": pid, "rank": rank, "command": command[:120]}


def end_now(code: int) -> NoReturn:
    """End this process with `code` as the interpreter's own exit would, less its teardown: taking
    hundreds of modules apart costs the launcher 0.04 s and a process that imported torch 0.2 to
    0.4 s of CPU, which one process per node on shared cores adds up. The exit handlers run and the
    output is flushed first. While another non-daemon thread runs, the usual exit, which waits for it."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the interpreter's exit runs first: logging's flush, finalizers
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)
