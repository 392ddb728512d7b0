"""Compressing the image's stream on its way out (no Docker): order kept, members `docker load` can
read (gzip's own reader stands in for it), the level following the link, and progress in the
stream's own bytes."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from launcher.errors import SpecError
from launcher.image.squeeze import BLOCK, RawProgress, Squeezer, mode, squeezed

TEXT = b"".join(b"line %d of a Python package's source\n" % i for i in range(400_000))  # about 15 MB, compressible


def members(stream: bytes) -> list[tuple[int, int]]:
    """(compressed size, decompressed size) of each gzip member, in order."""
    found = []
    while stream:
        d = zlib.decompressobj(31)
        size = len(d.decompress(stream))
        found.append((len(stream) - len(d.unused_data), size))
        stream = d.unused_data
    return found


def squeeze(data: bytes, link_busy, compress: str = "auto", piece: int = 100_003) -> tuple[bytes, Squeezer]:
    out = bytearray()
    s = Squeezer(out.extend, link_busy, compress, workers=2)
    for i in range(0, len(data), piece):  # pieces that do not line up with blocks
        s.write(data[i:i + piece])
    s.close()
    return bytes(out), s


def test_the_stream_is_gzip_members_in_order_that_give_back_the_input() -> None:
    data = os.urandom(BLOCK + 12345) + TEXT + os.urandom(777)
    out, s = squeeze(data, lambda: True)
    assert gzip.decompress(out) == data
    assert len(members(out)) == -(-len(data) // BLOCK)
    assert (s.raw_in, s.raw_sent, s.sent) == (len(data), len(data), len(out))


def test_a_link_with_a_backlog_gets_every_block_compressed() -> None:
    out, _ = squeeze(TEXT, lambda: True)
    assert len(out) < len(TEXT) / 4


def test_a_link_without_a_backlog_gets_blocks_as_they_are_and_a_backlog_turns_compression_on() -> None:
    """A link that keeps up (nothing waits to be sent) gets blocks at level 0, their bytes as they
    are, framed: it never waits for the compression. Once a backlog builds up, blocks are compressed."""
    data = TEXT * 3
    busy = [False]
    s = Squeezer(bytearray().extend, lambda: busy[0], workers=1)
    out = bytearray()
    s.write_out = out.extend
    s.write(data[:4 * BLOCK])
    busy[0] = True
    s.write(data[4 * BLOCK:])
    s.close()
    sizes = members(bytes(out))
    assert gzip.decompress(bytes(out)) == data
    assert all(packed >= raw for packed, raw in sizes[:4]), sizes
    assert all(packed < raw / 4 for packed, raw in sizes[4:]), sizes


def test_on_compresses_every_block_even_for_a_link_that_keeps_up() -> None:
    out, _ = squeeze(TEXT * 3, lambda: False, compress="on")
    assert all(packed < raw / 4 for packed, raw in members(out))


def test_raw_for_maps_what_went_out_to_the_input_it_holds_by_whole_blocks() -> None:
    data = TEXT * 2
    out, s = squeeze(data, lambda: True)
    ends = [0]
    for packed, raw in members(out):
        ends.append(ends[-1] + packed)
    assert s.raw_for(0) == 0
    assert s.raw_for(ends[1] - 1) == 0  # a block half sent holds nothing yet
    assert s.raw_for(ends[1]) == BLOCK
    assert s.raw_for(len(out)) == s.raw_for(len(out) + 10) == len(data)


def test_progress_is_told_in_the_input_bytes_per_host() -> None:
    data = TEXT * 2
    told: dict[str, int] = {}
    progress = RawProgress(lambda host, n: told.__setitem__(host, told.get(host, 0) + n))
    out, progress.squeezer = squeeze(data, lambda: True)
    for start in range(0, len(out), 65536):  # what two hosts received, in pieces
        progress("h1", len(out[start:start + 65536]))
    progress("h2", len(out) // 2)
    assert told["h1"] == len(data)
    assert 0 < told.get("h2", 0) < len(data)


def test_a_failing_link_fails_the_writer_and_nothing_hangs() -> None:
    def broken(data: bytes) -> None:
        raise OSError("the channel closed")

    s = Squeezer(broken, lambda: True, workers=2)
    with pytest.raises(OSError, match="the channel closed"):
        for _ in range(8):
            s.write(os.urandom(BLOCK))
    s.abandon()
    assert s.pool._shutdown


def test_the_setting_is_auto_on_or_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAUNCH_IMAGE_COMPRESSION", raising=False)
    assert mode() == "auto"
    monkeypatch.setenv("LAUNCH_IMAGE_COMPRESSION", "off")
    assert squeezed(lambda data: None, lambda: True) is None
    monkeypatch.setenv("LAUNCH_IMAGE_COMPRESSION", "on")
    s = squeezed(lambda data: None, lambda: False)
    assert s is not None and s.compress == "on"
    s.close()
    monkeypatch.setenv("LAUNCH_IMAGE_COMPRESSION", "zstd")
    with pytest.raises(SpecError, match="LAUNCH_IMAGE_COMPRESSION='zstd': expected one of auto, on, off"):
        mode()
