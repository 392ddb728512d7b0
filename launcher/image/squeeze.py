"""Compressing an image's stream on its way out, as far as the link is what holds it back.

`docker load` takes a gzip-compressed archive as well as a plain one, and gzip streams may be
concatenated: the stream is cut into blocks, each compressed by a pool of threads as a gzip member
of its own and written out in order. A block is compressed (level 1) while the link has a backlog
(what waits to be sent is at least half of what may wait), and only framed (level 0: its bytes as
they are) otherwise: the link never waits for the compression, so a fast link, or a sender short of
CPU, is not held back by it. Layers of Python packages
and CUDA libraries shrink to a third or a half; random data is sent as it is at no loss.

LAUNCH_IMAGE_COMPRESSION: `auto` (that rule, the default), `on` (every block), `off` (a plain stream).
"""

from __future__ import annotations

import bisect
import gzip
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from ..errors import SpecError

BLOCK = 4 << 20
SLICE = 1 << 20  # what is handed on at a time
ENV = "LAUNCH_IMAGE_COMPRESSION"
MODES = ("auto", "on", "off")


def mode() -> str:
    """`auto`, `on` or `off`: what LAUNCH_IMAGE_COMPRESSION says (auto where it is not set)."""
    text = os.environ.get(ENV, "").strip() or "auto"
    if text not in MODES:
        raise SpecError(f"{ENV}={text!r}: expected one of {', '.join(MODES)}")
    return text


class Squeezer:
    """A writer that compresses what it is given into `write`, keeping the order.

    `link_busy()` says whether the link has a backlog (then a block is compressed in `auto`).
    `raw_for(n)` is how many bytes of the input the first `n` bytes of the output hold.
    """

    def __init__(self, write: Callable[[bytes], None], link_busy: Callable[[], bool], compress: str = "auto",
                 workers: int | None = None) -> None:
        self.write_out, self.link_busy, self.compress = write, link_busy, compress
        workers = workers or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="squeeze")
        self.pending: deque[tuple[Future, int]] = deque()
        self.limit = 2 * workers  # blocks in the pool at most: memory stays at a few blocks
        self.buffer = bytearray()
        self.raw_in = 0  # bytes given to `write`
        self.sent = 0  # compressed bytes handed to `write_out`
        self.raw_sent = 0  # the input bytes those hold
        self.ends: list[int] = []  # output offsets where a block ends
        self.raws: list[int] = []  # and the input offsets they stand for
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        self.raw_in += len(data)
        self.buffer += data
        while len(self.buffer) >= BLOCK:
            block = bytes(self.buffer[:BLOCK])
            del self.buffer[:BLOCK]
            self._submit(block)

    def close(self) -> None:
        """Compress what is left and write everything out (the pool is shut down either way)."""
        try:
            if self.buffer:
                self._submit(bytes(self.buffer))
                self.buffer.clear()
            while self.pending:
                self._flush_head()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Stop without writing what is pending (the receiver failed)."""
        for future, _ in self.pending:
            future.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True)

    def raw_for(self, sent: int) -> int:
        """How many input bytes the first `sent` bytes of the output hold (whole blocks only)."""
        with self.lock:
            i = bisect.bisect_right(self.ends, sent)
            return self.raws[i - 1] if i else 0

    def _level(self) -> int:
        if self.compress == "on":
            return 1
        return 1 if self.link_busy() else 0

    def _submit(self, block: bytes) -> None:
        while len(self.pending) >= self.limit:
            self._flush_head()
        self.pending.append((self.pool.submit(gzip.compress, block, self._level(), mtime=0), len(block)))
        while self.pending and self.pending[0][0].done():
            self._flush_head()

    def _flush_head(self) -> None:
        future, raw = self.pending.popleft()
        out = future.result()
        with self.lock:  # before it goes: whoever sends it may tell its progress at once
            self.sent += len(out)
            self.raw_sent += raw
            self.ends.append(self.sent)
            self.raws.append(self.raw_sent)
        view = memoryview(out)
        for start in range(0, len(out), SLICE):  # the writer queues what it is given: in slices, memory stays bounded
            self.write_out(bytes(view[start:start + SLICE]))


class RawProgress:
    """Progress in the stream's own bytes, from the compressed bytes sent to (or received by) each
    host: an `on_bytes(host, n)` for the sending side, calling the given one. Until `squeezer` is
    set (and with none), bytes are passed on as they are."""

    def __init__(self, on_bytes: Callable[[str, int], None] | None) -> None:
        self.on_bytes = on_bytes
        self.squeezer: Squeezer | None = None
        self.out: dict[str, int] = {}
        self.told: dict[str, int] = {}

    def __call__(self, host: str, n: int) -> None:
        if self.on_bytes is None:
            return
        if self.squeezer is None:
            self.on_bytes(host, n)
            return
        self.out[host] = self.out.get(host, 0) + n
        raw = self.squeezer.raw_for(self.out[host])
        if raw > self.told.get(host, 0):
            self.on_bytes(host, raw - self.told.get(host, 0))
            self.told[host] = raw


def squeezed(write: Callable[[bytes], None], link_busy: Callable[[], bool]) -> Squeezer | None:
    """A Squeezer into `write`, or None where LAUNCH_IMAGE_COMPRESSION is `off`."""
    chosen = mode()
    return None if chosen == "off" else Squeezer(write, link_busy, chosen)
