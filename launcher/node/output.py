"""A node's output: every line the node supervisor passes on (standard library only).

Each line goes to the node's output file (`contract.NODE_OUTPUT`, what `logs --follow` reads),
torchrun's own lines also to its log, and, with `--echo`, every line to stdout for an attached
launcher. A full or read-only disk costs the files, never the lines on the console.
"""

from __future__ import annotations

import os
import queue
import sys
import threading

from . import contract

ECHO_QUEUE = 10000  # lines waiting for stdout; more are dropped from stdout (the output file has them)


class NodeOutput:
    def __init__(self, host: str, echo: bool) -> None:
        self.host = host
        self.lock = threading.Lock()  # the output file and the agent log
        self.file = None
        self.echo: queue.Queue[bytes | None] | None = queue.Queue(ECHO_QUEUE) if echo else None
        self.echo_thread: threading.Thread | None = None
        self.agent_log_failed = False

    def open(self, path: str) -> None:
        """Start writing to the output file at `path` (appending), and to stdout when echoing."""
        self.file = open(path, "ab", buffering=0)
        if self.echo is not None:
            self.echo_thread = threading.Thread(target=self._echo, daemon=True)
            self.echo_thread.start()

    def emit(self, line: bytes, agent_log=None) -> None:
        """One line of the node's output: to the node's output file, and to stdout when echoing.

        Stdout is written by a thread of its own, so a stalled SSH channel never holds up the
        node (its lines wait in a bounded queue, then are dropped from stdout alone)."""
        failed = None
        with self.lock:
            if self.file is not None:
                try:
                    self.file.write(line)
                except OSError as exc:  # a full or read-only disk: the node goes on, its lines still reach the console
                    self.file, failed = None, exc
            if agent_log is not None and not self.agent_log_failed:
                try:
                    agent_log.write(line)
                except OSError as exc:
                    self.agent_log_failed, failed = True, exc
        if failed is not None:
            notice = f"launch: cannot write the node's files any more ({failed.strerror or failed}); its lines go on to the console only\n"
            self._to_stdout(contract.agent_prefix(self.host) + notice.encode())
        self._to_stdout(line)

    def _to_stdout(self, line: bytes) -> None:
        echo = self.echo
        if echo is not None:
            try:
                echo.put_nowait(line)
            except queue.Full:
                pass

    def _echo(self) -> None:
        assert self.echo is not None
        while (line := self.echo.get()) is not None:
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
            except (BrokenPipeError, OSError):  # the launcher is gone: its lease will tell
                self.echo = None
                return

    def close(self) -> None:
        """Let what is queued for stdout go out (unless stdout is stuck), and close the output file."""
        if self.echo_thread is not None and self.echo is not None:
            self.echo.put(None)
            self.echo_thread.join(timeout=5)
        with self.lock:
            if self.file is not None:
                try:
                    self.file.close()
                except OSError:
                    pass
            self.file = None


def open_or_null(path: str):
    """The file for appending, or /dev/null when it cannot be opened (a full or read-only disk)."""
    try:
        return open(path, "ab", buffering=0)
    except OSError:
        return open(os.devnull, "ab", buffering=0)
