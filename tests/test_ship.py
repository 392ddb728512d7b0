"""Splitting a `docker save` stream by layer, on synthetic archives of both layouts (no Docker)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest


from launcher.hosts import ssh
from launcher.image import ship

from launcher.image.prune import stale
from launcher.image.layers import LayerDirs, Receiver, chain_ids, must_learn, split_save

LAYERS = [b"base layer " * 5000, b"deps layer " * 3000, b"code v1"]


def diff_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def archive(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def legacy_save(layers: list[bytes]) -> bytes:
    dirs = [f"{i:064x}" for i in range(len(layers))]
    dirs[-1] = hashlib.sha256(layers[-1]).hexdigest()  # the top layer's dir changes with its content
    entries = []
    for d, data in zip(dirs, layers):
        entries += [(f"{d}/VERSION", b"1.0"), (f"{d}/json", b"{}"), (f"{d}/layer.tar", data)]
    manifest = [{"Config": "config.json", "RepoTags": ["launch/x:1"], "Layers": [f"{d}/layer.tar" for d in dirs]}]
    return archive(entries + [("config.json", b"{}"), ("manifest.json", json.dumps(manifest).encode())])


def chunks(data: bytes, size: int = 4096):
    return (data[i : i + size] for i in range(0, len(data), size))


def received(buffer: io.BytesIO) -> dict[str, bytes]:
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_chain_ids() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]


def test_legacy_layout_learns_layers_then_sends_only_what_a_host_lacks(tmp_path: Path) -> None:
    known = LayerDirs(tmp_path / "dirs.json")
    cold = io.BytesIO()
    first = Receiver("cold", set(), cold.write)
    split_save(chunks(legacy_save(LAYERS)), [first], known)
    assert first.sent_layers == 3 and first.skipped_layers == 0
    assert set(LayerDirs(tmp_path / "dirs.json").dirs.values()) == set(chain_ids([diff_id(d) for d in LAYERS]))

    edited = LAYERS[:2] + [b"code v2"]
    chains = chain_ids([diff_id(d) for d in edited])
    warm = io.BytesIO()
    second = Receiver("warm", set(chains[:2]), warm.write)  # it has the base and the deps
    split_save(chunks(legacy_save(edited)), [second], known)
    files = received(warm)
    assert (second.sent_layers, second.skipped_layers) == (1, 2)
    assert [name for name in files if name.endswith("layer.tar")] == [f"{hashlib.sha256(b'code v2').hexdigest()}/layer.tar"]
    assert "manifest.json" in files and second.sent < 10_000 < len(LAYERS[0])


def test_oci_layout_skips_blobs_the_host_has(tmp_path: Path) -> None:
    diffs = [diff_id(d) for d in LAYERS]
    chains = chain_ids(diffs)
    entries = [(f"blobs/sha256/{d.split(':')[1]}", data) for d, data in zip(diffs, LAYERS)]
    entries += [("blobs/sha256/" + "c" * 64, b"{config}"), ("index.json", b"{}"), ("manifest.json", b"[]")]
    host = io.BytesIO()
    r = Receiver("h", set(chains[:2]), host.write)
    split_save(chunks(archive(entries)), [r], LayerDirs(tmp_path / "dirs.json"), dict(zip(diffs, chains)))
    files = received(host)
    assert (r.sent_layers, r.skipped_layers) == (1, 2)
    assert f"blobs/sha256/{diffs[2].split(':')[1]}" in files and f"blobs/sha256/{diffs[0].split(':')[1]}" not in files
    assert "blobs/sha256/" + "c" * 64 in files and "index.json" in files


def test_a_new_image_needs_no_learning_pass_when_hosts_hold_only_known_layers(tmp_path: Path) -> None:
    known = LayerDirs(tmp_path / "dirs.json")
    split_save(chunks(legacy_save(LAYERS)), [Receiver("cold", set(), io.BytesIO().write)], known)
    chains = chain_ids([diff_id(d) for d in LAYERS[:2] + [b"requirements changed", b"code"]])
    assert not must_learn([Receiver("cold", set(), print)], known)
    assert not must_learn([Receiver("warm", set(chains[:2]), print), Receiver("cold", set(), print)], known)
    # a host holding a layer this machine never sent (loaded there some other way): its directory must be learned
    stranger = chain_ids([diff_id(b"loaded by hand")])
    assert must_learn([Receiver("other", set(chains[:2]) | set(stranger), print)], LayerDirs(tmp_path / "dirs.json"))


def test_a_learning_pass_over_the_oci_layout_stops_at_its_first_entry(tmp_path: Path) -> None:
    diffs = [diff_id(d) for d in LAYERS]
    data = archive([(f"blobs/sha256/{d.split(':')[1]}", layer) for d, layer in zip(diffs, LAYERS)] + [("index.json", b"{}")])
    read = []
    split_save((read.append(c) or c for c in chunks(data)), [], LayerDirs(tmp_path / "dirs.json"))
    assert 0 < sum(map(len, read)) < len(LAYERS[0]) < len(data)


def test_stale_images_are_all_but_the_newest_few_and_never_the_current_one() -> None:
    newest_first = ["r:e", "r:d", "r:c", "r:b", "r:a", "r:<none>"]
    assert stale(newest_first, current="r:e", keep=3) == ["r:b", "r:a"]
    assert stale(newest_first, current="r:a", keep=3) == ["r:c", "r:b"]  # an old version relaunched is kept
    assert stale(newest_first, current="r:e", keep=1) == ["r:d", "r:c", "r:b", "r:a"]
    assert stale(["r:x"], current="r:x") == []


class _LoadChannel:
    """A host's `docker load` channel, faked: it keeps what it is sent; once its input has ended (or
    after `fail_after` bytes, as a full disk would), it says `said` and ends."""

    def __init__(self, said: bytes, fail_after: int | None = None) -> None:
        self.got, self.said, self.fail_after = bytearray(), said, fail_after
        self.exit_status, self.closed = -1, False
        self.status_event = threading.Event()

    def settimeout(self, _seconds) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.got) >= self.fail_after:
            self.exit_status = 1
            self.status_event.set()
            raise OSError("Socket is closed")
        self.got += data

    def shutdown_write(self) -> None:
        self.exit_status = 0
        self.status_event.set()

    def recv(self, _size: int) -> bytes:
        said, self.said = self.said, b""
        return said

    def get_transport(self):
        return SimpleNamespace(is_active=lambda: True)

    def close(self) -> None:
        self.closed = True


def _direct_load(monkeypatch, channel: _LoadChannel, data: bytes) -> tuple[ship.ShipResult, _LoadChannel]:
    monkeypatch.setenv("LAUNCH_IMAGE_COMPRESSION", "on")
    monkeypatch.setattr(ssh, "open_command", lambda conn, argv: channel)
    monkeypatch.setattr(ship, "image_id_on", lambda conn, tag: "sha256:abc")
    load = ship._DirectLoad(SimpleNamespace(host="h1"), "h1", set(), None)
    for start in range(0, len(data), 65536):
        load.receiver.send(data[start:start + 65536])
    load.end_stream()
    return load.finish(SimpleNamespace(tag="launch/x:1", id="sha256:abc")), channel


def test_a_host_fed_directly_gets_the_stream_compressed_and_its_image_checked(monkeypatch) -> None:
    data = b"".join(b"line %d of a package\n" % i for i in range(600_000))
    result, channel = _direct_load(monkeypatch, _LoadChannel(b"Loaded image: launch/x:1\n"), data)
    assert result.error is None, result.error
    assert gzip.decompress(bytes(channel.got)) == data
    assert (result.raw_bytes, result.bytes_sent) == (len(data), len(channel.got))
    assert result.bytes_sent < len(data) / 4 and channel.closed


def test_a_load_that_stops_taking_its_stream_is_named_with_what_it_said(monkeypatch) -> None:
    said = b"write /var/lib/docker/tmp/docker-import-1/layer.tar: no space left on device\n"
    data = os.urandom(10 << 20)  # more than the host takes
    result, channel = _direct_load(monkeypatch, _LoadChannel(said, fail_after=1 << 20), data)
    assert result.error == ("sending the image failed: Socket is closed; docker load said: "
                            "write /var/lib/docker/tmp/docker-import-1/layer.tar: no space left on device")
    assert channel.closed


def test_ctrl_c_while_hosts_load_closes_their_channels_and_goes_on_up_at_once() -> None:
    """Hosts fed directly unpack side by side for as long as it takes; Ctrl-C does not wait for them."""
    import _thread
    import time

    class Stuck:
        def __init__(self) -> None:
            self.closed = threading.Event()
            self.channel = SimpleNamespace(close=self.closed.set)

        def finish(self, image) -> str:
            self.closed.wait(60)  # a load that goes on until its channel closes
            return "ended"

    loads = {"h1": Stuck(), "h2": Stuck()}
    # Python's own Ctrl-C handler, also where the tests run with SIGINT ignored (a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, _thread.interrupt_main).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ship._finish_all(loads, None)  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 10
    assert all(load.closed.is_set() for load in loads.values())


def test_a_host_whose_connection_takes_nothing_fails_alone_and_its_connection_is_closed() -> None:
    """A cut cable leaves a send stuck in the connection itself, past the channel's time-out: the
    host fails once it took nothing for the stall time, and closing its connection ends that send."""
    import socket
    import time

    class Stuck:
        def __init__(self) -> None:
            self.closed = threading.Event()

        def sendall(self, data: bytes) -> None:
            if self.closed.wait(60):  # what a closed connection does to a stuck send
                raise EOFError()

        def get_transport(self):
            return SimpleNamespace(close=self.closed.set)

    link = Stuck()
    sender = ship._Sender(link, "h2", None, stall_s=0.5, link=link)
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        for _ in range(64):
            sender.write(b"x" * (1 << 20))
    assert time.monotonic() - started < 10 and link.closed.wait(5)
    sender.close()  # ends at once: the host's chunks are dropped
    assert isinstance(sender.error, socket.timeout) and not sender.thread.is_alive()

    # stuck on the last of its stream, with room in its queue: the end does not wait for TCP either
    link = Stuck()
    sender = ship._Sender(link, "h3", None, stall_s=0.5, link=link)
    sender.write(b"x" * (1 << 20))
    started = time.monotonic()
    sender.close()
    assert time.monotonic() - started < 10 and link.closed.wait(5)
    assert isinstance(sender.error, socket.timeout) and not sender.thread.is_alive()
