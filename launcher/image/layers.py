"""Splitting one `docker save` stream by layer, so that each host gets only the layers it lacks.

`docker load` takes a layer it already has from its own store without opening that layer's file, so
each host gets the tar entries of the layers it lacks and the small metadata files. Which save
directory holds which layer is learned by hashing layers as they stream past, and kept in a small
cache file, so a relaunch after a code edit sends only the new top layers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

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
            except Exception as exc:  # noqa: BLE001 - a host that fails stops receiving; others go on (Ctrl-C goes on up)
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
