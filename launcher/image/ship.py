"""Getting the job's image onto every host that lacks it, in parallel, sending only missing layers.

A host that has the image's ID is skipped. Otherwise one `docker save` stream from this machine is
split by layer: each host gets the tar entries of the layers it lacks (docker load takes a layer it
already has from its own store without opening that layer's file) and the small metadata files.
Which save directory holds which layer is learned by hashing layers as they stream past, and kept
in a small cache file, so a relaunch after a code edit sends only the new top layers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import RunError

BLOCK = 512
OCI_NAMES = ("blobs", "oci-layout", "index.json")  # what only the OCI layout of `docker save` (Engine 25+) holds
CHUNK = 1 << 20


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs: the identity of a layer together with everything below it."""
    chains: list[str] = []
    for diff in diff_ids:
        chains.append(_chain(chains[-1] if chains else None, diff))
    return chains


def _chain(below: str | None, diff: str) -> str:
    """The chain ID of layer `diff` on top of the chain `below` (None: the first layer)."""
    return diff if below is None else "sha256:" + hashlib.sha256(f"{below} {diff}".encode()).hexdigest()


class LayerDirs:
    """What `docker save` directory name holds which layer (by chain ID), remembered between runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.dirs: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.dirs = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")  # two launches at once each write their own
        tmp.write_text(json.dumps(self.dirs))
        tmp.replace(self.path)


@dataclass
class Receiver:
    """One host's `docker load`: what it already has, and where its tar stream goes."""

    host: str
    chains: set[str]  # layers the host has
    write: Callable[[bytes], None]
    sent: int = 0
    skipped_layers: int = 0
    sent_layers: int = 0
    failed: BaseException | None = None

    def send(self, data: bytes) -> None:
        if self.failed is None:
            try:
                self.write(data)
                self.sent += len(data)
            except BaseException as exc:  # a host that fails stops receiving; others go on
                self.failed = exc


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (the Docker SDK's save stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks: Iterator[bytes] = iter(chunks)
        self.rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.rest:
            try:
                self.rest = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self.rest))
        buffer[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n


def split_save(chunks: Iterable[bytes], receivers: list[Receiver], known: LayerDirs,
               diff_chains: dict[str, str] | None = None) -> None:
    """Stream a `docker save` tar to every receiver, leaving out the layers each one has.

    Two layouts: the legacy one (Docker Engine before 25: `<dir>/layer.tar`, dirs learned in
    `known`) and the OCI one (`blobs/sha256/<diff ID>` for uncompressed layers), where
    `diff_chains` (diff ID -> chain ID of the image being sent) says which layer a blob is.
    """
    diff_chains = diff_chains or {}
    tar = tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), CHUNK), mode="r|")
    hashes: dict[str, str] = {}  # save directory -> diff ID, for directories not yet known
    manifest: list[dict] | None = None
    counted: set[tuple[str, str]] = set()
    for member in tar:
        if not receivers and member.name.split("/", 1)[0] in OCI_NAMES:
            return  # a pass to learn directories, over the OCI layout: it names layers by their digests already
        top = member.name.split("/", 1)[0]
        if member.name.startswith("blobs/sha256/"):
            top = member.name
            chain = diff_chains.get("sha256:" + member.name.rsplit("/", 1)[1])
        else:
            chain = known.dirs.get(top)
        wanted = [r for r in receivers if chain is None or chain not in r.chains]
        for r in receivers:
            is_layer = member.name.endswith("/layer.tar") or (top.startswith("blobs/") and chain is not None)
            if is_layer and (r.host, top) not in counted:
                counted.add((r.host, top))
                if r in wanted:
                    r.sent_layers += 1
                else:
                    r.skipped_layers += 1
        header = member.tobuf(format=tarfile.GNU_FORMAT)
        for r in wanted:
            r.send(header)
        if member.isfile():
            source = tar.extractfile(member)
            assert source is not None
            digest = hashlib.sha256() if member.name.endswith("/layer.tar") and chain is None else None
            keep = bytearray() if member.name == "manifest.json" else None
            while chunk := source.read(CHUNK):
                if digest:
                    digest.update(chunk)
                if keep is not None:
                    keep += chunk
                for r in wanted:
                    r.send(chunk)
            if member.size % BLOCK:
                pad = b"\0" * (BLOCK - member.size % BLOCK)
                for r in wanted:
                    r.send(pad)
            if digest:
                hashes[top] = "sha256:" + digest.hexdigest()
            if keep is not None:
                manifest = json.loads(bytes(keep))
    for r in receivers:
        r.send(b"\0" * (2 * BLOCK))
    if manifest:
        _learn(manifest, hashes, known)


def must_learn(receivers: list[Receiver], known: LayerDirs) -> bool:
    """Whether a pass that sends nothing must first learn which save directory holds which layer:
    only when a host holds a layer of the image whose directory is not known. A directory not known
    goes to every host, which is right for the layers no host has (a new image's new layers)."""
    held = set().union(*(r.chains for r in receivers))
    return not held <= set(known.dirs.values())


def _learn(manifest: list[dict], hashes: dict[str, str], known: LayerDirs) -> None:
    for entry in manifest:
        chain: str | None = None
        for layer in entry.get("Layers", []):
            d = layer.split("/", 1)[0]
            if d in known.dirs:
                chain = known.dirs[d]
            elif d in hashes:
                diff = hashes[d]
                chain = _chain(chain, diff)
                known.dirs[d] = chain
            else:
                break
    known.save()


@dataclass
class ShipResult:
    host: str
    skipped: bool  # the host had the image already
    bytes_sent: int = 0
    layers_sent: int = 0
    layers_skipped: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class ShipReport:
    results: dict[str, ShipResult] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return {h: r.error for h, r in self.results.items() if r.error}

    def raise_for_failures(self) -> None:
        if self.failed:
            lines = "; ".join(f"{h}: {e}" for h, e in self.failed.items())
            raise RunError(f"the image could not be sent to {len(self.failed)} host(s): {lines}")


class _Sender:
    """Writes one host's stream from a thread of its own, so hosts receive in parallel.

    Small writes (tar headers) are gathered into chunks; a bounded queue keeps memory in check.
    """

    def __init__(self, channel, host: str, on_bytes: Callable[[str, int], None] | None) -> None:
        self.channel, self.host, self.on_bytes = channel, host, on_bytes
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=32)
        self.buffer = bytearray()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self.queue.put(bytes(self.buffer))
            self.buffer.clear()

    def close(self) -> None:
        if self.buffer:
            self.queue.put(bytes(self.buffer))
            self.buffer.clear()
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.channel.sendall(data)
                    if self.on_bytes:
                        self.on_bytes(self.host, len(data))
                except BaseException as exc:  # noqa: BLE001 - reported with the host's result
                    self.error = exc


def host_layers(conn) -> set[str]:
    """Which layers (chain IDs) the host's images hold."""
    from ..hosts.ssh import run

    code, out = run(conn, ["sh", "-c", "docker image ls -aq --no-trunc | sort -u | xargs -r docker image inspect --format '{{json .RootFS.Layers}}'"])
    if code != 0:
        raise RunError(f"cannot list the host's images: {out.strip()[-300:]}")
    chains: set[str] = set()
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("["):
            chains.update(chain_ids(json.loads(line)))
    return chains


def image_id_on(conn, tag: str) -> str | None:
    from ..hosts.ssh import run

    code, out = run(conn, ["docker", "image", "inspect", "--format", "{{.Id}}", tag])
    return out.strip() if code == 0 else None


def _tag_held_image(conn, image_id: str, tag: str) -> bool:
    """Tag the image on the host if it has it already (jobs with the same inputs share one image)."""
    from ..hosts.ssh import run

    if image_id_on(conn, image_id) != image_id:
        return False
    code, _ = run(conn, ["docker", "tag", image_id, tag])
    return code == 0 and image_id_on(conn, tag) == image_id


def ship_image(client, tag: str, conns: dict, known_path: Path, on_bytes: Callable[[str, int], None] | None = None) -> ShipReport:
    """Make `tag` present on every host of `conns` ({host: Connection}); report what was sent."""
    from ..hosts.ssh import open_command

    local = client.images.get(tag)
    chains = chain_ids(local.attrs["RootFS"]["Layers"])
    report = ShipReport()
    receivers: list[Receiver] = []
    channels = {}
    senders: dict[str, _Sender] = {}
    started = time.monotonic()
    for host, conn in conns.items():
        try:
            if image_id_on(conn, tag) == local.id:
                report.results[host] = ShipResult(host, skipped=True)
                continue
            if _tag_held_image(conn, local.id, tag):  # the same image under another job's tag
                report.results[host] = ShipResult(host, skipped=True)
                continue
            have = host_layers(conn)
            channel = open_command(conn, ["docker", "load", "-q"])
        except Exception as exc:  # noqa: BLE001 - every host is reported
            report.results[host] = ShipResult(host, skipped=False, error=str(exc))
            continue
        channels[host] = channel

        senders[host] = _Sender(channel, host, on_bytes)
        receivers.append(Receiver(host, have & set(chains), senders[host].write))
    if receivers:
        known = LayerDirs(known_path)
        try:
            if must_learn(receivers, known):
                split_save(local.save(chunk_size=CHUNK, named=tag), [], known)  # learn where the layers are, send nothing
            split_save(local.save(chunk_size=CHUNK, named=tag), receivers, known, dict(zip(local.attrs["RootFS"]["Layers"], chains)))
        except Exception as exc:  # noqa: BLE001 - the SDK and tarfile raise several kinds; every host hears of it
            reason = f"reading `docker save` of {tag} from this machine's Docker engine failed: {type(exc).__name__}: {exc}"
            for r in receivers:
                if r.failed is None:
                    r.failed = RunError(reason)
    for r in receivers:
        channel = channels[r.host]
        error = None
        try:
            senders[r.host].close()
            channel.shutdown_write()
            output = channel.makefile("rb").read().decode(errors="replace")
            failed = r.failed or senders[r.host].error
            if channel.recv_exit_status() != 0 or failed:
                error = f"docker load failed: {failed or output.strip()[-300:]}"
            elif image_id_on(conns[r.host], tag) != local.id:
                error = f"after loading, {tag} is not image {local.id}"
        except Exception as exc:  # noqa: BLE001
            error = str(exc)
        report.results[r.host] = ShipResult(r.host, False, r.sent, r.sent_layers, r.skipped_layers,
                                            time.monotonic() - started, error)
    return report
