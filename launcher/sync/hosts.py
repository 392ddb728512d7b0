"""Keeping exact copies of a job's workdir on its hosts, over SSH, with sh, cp and tar there.

On each host a job's copies live in one folder (`plan.workdir_copies`), each named by the
workdir's hash, with its manifest beside it (`<hash>.json.gz`, for launches from other machines). A new copy is put together in a hidden
folder and renamed into place only when complete, so ranks never see half of one; copies are never
changed after that (containers mount them read-only).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import secrets
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import fabric

from ..errors import RunError
from ..hosts.ssh import end_input, open_command, run
from ..node.contract import replace_file
from .manifest import Entry, Manifest
from .transfer import Transfer, plan_transfer

_HASH = re.compile(r"[0-9a-f]{16}")
STALE_PARTIAL_MIN = 60  # a copy left half made by a launch that died is removed after this long

# $0: the copies' folder. Prints its entries, newest first, those of transfers under way (or left by
# a launch that died: `.partial-*`, `.incoming-*`) too.
_LIST = 'cd "$0" 2>/dev/null || exit 0; ls -1At'
_UNDER_WAY = re.compile(r"\.(partial|incoming)-.*")
# $0: folder, $1: hash, $2: the copy to start from ("" for none), $3: a name for this transfer.
# stdin: a tar of `remove` (NUL-separated paths), `manifest.json.gz`, `files/...` (what is new), and last
# `complete`: a stream cut short (the launcher saw a file change while sending it) makes nothing.
_RECEIVE = r'''
set -e
umask 022
mkdir -p "$0"
cd "$0"
s=".incoming-$3"; p=".partial-$3"
trap 'rm -rf "$s" "$p"' EXIT
mkdir "$s"
tar -x -f - -C "$s"
[ -e "$s/complete" ] || { echo "the workdir's stream ended early" >&2; exit 1; }
if [ -n "$2" ]; then cp -al "$2" "$p"; else mkdir "$p"; fi
(cd "$p" && xargs -0 -r rm -rf -- < "../$s/remove")
if [ -d "$s/files" ]; then cp -al "$s/files/." "$p/"; fi
find "$p" -mindepth 1 -depth -type d -empty -delete
mv "$s/manifest.json.gz" "$1.json.gz"
if mv -T "$p" "$1" 2>/dev/null; then :; elif [ -d "$1" ]; then :; else echo "cannot rename $p to $1" >&2; exit 1; fi
touch -c "$1"
'''
# $0: folder, $1: the copy in use now, $2: how many to keep. Removes older copies that no running
# container mounts (label launch.workdir) and the leftovers of launches that died; prints the removed.
_PRUNE = r'''
cd "$0" 2>/dev/null || exit 0
touch -c "$1"
used=" $(docker ps --format '{{.Label "launch.workdir"}}' 2>/dev/null | tr '\n' ' ') "
n=0
for d in $(ls -1t); do
    case "$d" in *.json.gz) continue ;; esac
    [ -d "$d" ] || continue
    n=$((n + 1))
    [ "$d" = "$1" ] && continue
    [ "$n" -le "$2" ] && continue
    case "$used" in *" $d "*) continue ;; esac
    rm -rf "$d" "$d.json.gz" && echo "$d"
done
find . -maxdepth 1 \( -name '.partial-*' -o -name '.incoming-*' \) -mmin +''' + str(STALE_PARTIAL_MIN) + r''' -exec rm -rf {} + 2>/dev/null
exit 0
'''


@dataclass
class SyncResult:
    transfer: Transfer
    sent_bytes: int = 0  # on the wire: the tar stream, headers included
    via: str | None = None  # the host it came from, down a chain (None: straight from this machine)


def copies_on(conn: fabric.Connection, folder: str) -> tuple[list[str], bool]:
    """The workdir copies a host holds, newest first; and whether a transfer's folder is there too
    (under way, or left by a launch that died)."""
    code, out = run(conn, ["sh", "-c", _LIST, folder], timeout=60)
    if code != 0:
        raise RunError(f"{conn.host}: cannot list {folder}: {out.strip()[-200:]}")
    names = out.split()
    return [name for name in names if _HASH.fullmatch(name)], any(_UNDER_WAY.fullmatch(name) for name in names)


def manifest_on(conn: fabric.Connection, folder: str, name: str, cache: Path) -> Manifest | None:
    """The manifest of a host's copy, from this machine's cache or else from the host."""
    local = cache / f"{name}.json"
    try:
        return Manifest.from_json(json.loads(local.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    code, out = run(conn, ["gzip", "-dc", f"{folder}/{name}.json.gz"], timeout=60)
    try:
        return Manifest.from_json(json.loads(out)) if code == 0 else None
    except (ValueError, KeyError, TypeError):
        return None


def plan_for(conn: fabric.Connection, host: str, folder: str, manifest: Manifest, cache: Path) -> Transfer:
    """What `host` needs to hold this workdir (asks the host; changes nothing)."""
    copies, leftovers = copies_on(conn, folder)
    known: dict[str, Manifest] = {}
    if manifest.hash not in copies:
        for name in copies:
            found = manifest_on(conn, folder, name, cache)
            if found is not None:
                known[name] = found
    return plan_transfer(host, manifest, copies, known, leftovers)


def remember(manifest: Manifest, cache: Path) -> None:
    """Keep the manifest here, so that later transfers can start from this copy without asking."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{manifest.hash}.json"
    if not target.exists():
        replace_file(str(target), json.dumps(manifest.to_json()).encode())


class _Channel(io.RawIOBase):
    """The write end of a remote command's stdin, counting bytes."""

    def __init__(self, channel, on_bytes: Callable[[int], None]) -> None:
        self.channel = channel
        self.on_bytes = on_bytes
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.channel.sendall(bytes(data))
        self.count += len(data)
        self.on_bytes(len(data))
        return len(data)


class _Checked(io.RawIOBase):
    """A file read for sending, hashed on the way, so that an edit made while sending is caught."""

    def __init__(self, fh) -> None:
        import hashlib

        self.fh = fh
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.fh.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n or 0


def send(conn: fabric.Connection, folder: str, workdir: Path, manifest: Manifest, transfer: Transfer,
         on_bytes: Callable[[int], None] = lambda n: None) -> SyncResult:
    """Make the host's copy of the workdir (`transfer` says from which copy, and what is new)."""
    if transfer.present:
        return SyncResult(transfer)
    nonce = secrets.token_hex(6)
    channel = open_command(conn, ["sh", "-c", _RECEIVE, folder, manifest.hash, transfer.base or "", nonce])
    out = _Channel(channel, on_bytes)
    try:
        _write_stream(out, workdir, manifest, transfer)
        end_input(channel)
        output = channel.makefile("rb").read().decode(errors="replace")
        code = channel.recv_exit_status()
    except RunError:
        raise
    except Exception as exc:  # noqa: BLE001 - SSH errors of several kinds, one line naming the host
        raise RunError(f"{conn.host}: sending the workdir failed: {str(exc) or type(exc).__name__}") from None
    finally:
        channel.close()
    if code != 0:
        raise RunError(f"{conn.host}: cannot make the workdir's copy in {folder}: {output.strip()[-300:]}")
    return SyncResult(transfer, out.count)


def send_down_chain(conns: dict[str, fabric.Connection], hosts: dict[str, tuple[str, str]], workdir: Path,
                    manifest: Manifest, transfer: Transfer, on_bytes: Callable[[str, int], None] | None = None) -> dict[str, SyncResult | Exception]:
    """Make the same copy on several hosts ({host: (its copies' folder, its lab address)}) that need
    the very same `transfer`, with the stream leaving this machine once (`hosts.chain`)."""
    from ..hosts.chain import Hop, run_chain

    hops = [Hop(h, address, sink=("sh", "-c", _RECEIVE, folder, manifest.hash, transfer.base or "", secrets.token_hex(6)))
            for h, (folder, address) in hosts.items()]  # a name of its own for each host's transfer: their folders may be one
    def feed(framed) -> None:
        out = io.BufferedWriter(_Channel(framed, lambda n: None), 1 << 20)  # frames of a megabyte, not of a tar block
        _write_stream(out, workdir, manifest, transfer)
        out.flush()

    outcome = run_chain(conns, hops, feed, on_bytes)
    results: dict[str, SyncResult | Exception] = {}
    for host, hop in outcome.items():
        if hop.ok:
            results[host] = SyncResult(transfer, hop.received, via=hop.upstream)
        else:
            results[host] = RunError(f"{host}: the workdir did not come down the chain (from {hop.upstream}): {hop.error}")
    return results


def copy_here(folder: str, workdir: Path, manifest: Manifest, cache: Path) -> SyncResult:
    """Make a copy of the workdir in `folder` on this machine (a Slurm cluster's shared folder seen
    here), as `send` makes one on a host: from the nearest copy there, what is new only."""
    try:
        copies = sorted((n for n in os.listdir(folder) if _HASH.fullmatch(n)), key=lambda n: -os.stat(f"{folder}/{n}").st_mtime)
    except FileNotFoundError:
        copies = []
    except OSError as exc:
        raise RunError(f"cannot list {folder}: {exc.strerror or exc}") from None
    known = {}
    for name in copies:
        try:
            known[name] = Manifest.from_json(json.loads(gzip.decompress(Path(f"{folder}/{name}.json.gz").read_bytes())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    transfer = plan_transfer("this machine", manifest, copies, known)
    if transfer.present:
        return SyncResult(transfer)
    receive = subprocess.Popen(["sh", "-c", _RECEIVE, folder, manifest.hash, transfer.base or "", secrets.token_hex(6)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert receive.stdin is not None and receive.stdout is not None
    try:
        with receive.stdin:
            _write_stream(receive.stdin, workdir, manifest, transfer)
    except BrokenPipeError:
        pass  # its error says why
    output = receive.stdout.read().decode(errors="replace")
    if receive.wait() != 0:
        raise RunError(f"cannot make the workdir's copy in {folder}: {output.strip()[-300:]}")
    return SyncResult(transfer, transfer.bytes)


def _write_stream(out, workdir: Path, manifest: Manifest, transfer: Transfer) -> None:
    """The tar stream `_RECEIVE` reads: what to remove, the manifest, the new files, then `complete`."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "remove", b"".join(p.encode() + b"\0" for p in transfer.remove))
        _add_bytes(tar, "manifest.json.gz", gzip.compress(json.dumps(manifest.to_json()).encode(), mtime=0))
        for entry in transfer.send:
            _add_file(tar, workdir, entry)
        _add_bytes(tar, "complete", b"")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, workdir: Path, entry: Entry) -> None:
    info = tarfile.TarInfo(f"files/{entry.path}")
    if entry.link is not None:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.link, 0o777
        tar.addfile(info)
        return
    info.size, info.mode = entry.size, 0o755 if entry.executable else 0o644
    try:
        with open(workdir / entry.path, "rb") as fh:
            info.mtime = int(os.fstat(fh.fileno()).st_mtime)  # as here, not 1970
            checked = _Checked(fh)
            tar.addfile(info, io.BufferedReader(checked))
    except (OSError, tarfile.TarError) as exc:
        raise RunError(f"{workdir / entry.path}: changed or went while being sent ({exc}); launch again") from None
    if checked.digest.hexdigest() != entry.sha:
        raise RunError(f"{workdir / entry.path}: changed while being sent; launch again")


def prune(conn: fabric.Connection, folder: str, current: str, keep: int) -> list[str]:
    """Remove a host's older copies of the job's workdir (keeping `keep`, and any a container uses)."""
    code, out = run(conn, ["sh", "-c", _PRUNE, folder, current, str(keep)], timeout=120)
    return [name for name in out.split() if _HASH.fullmatch(name)] if code == 0 else []
