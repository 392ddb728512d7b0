"""What a job's workdir holds, file by file, and one hash for all of it.

The files are those not excluded by the defaults below or the workdir's `.launchignore` (gitignore
syntax; a `!pattern` there can bring back a default). Each file is hashed by content; hashes are
remembered by size, mtime and inode (as git and rsync do), so an unchanged workdir of many files
costs a stat per file on each launch, not a read.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pathspec

IGNORE_FILE = ".launchignore"
DEFAULT_IGNORES = (
    ".git/", ".hg/", ".svn/", "__pycache__/", "*.pyc", "runs/", "checkpoints/",
    ".venv/", "venv/", ".pytest_cache/", ".mypy_cache/", ".ipynb_checkpoints/", ".DS_Store",
)
LARGE_BYTES = 100 * 10**6  # a workdir larger than this after ignores is named in a warning
RACY_NS = 2 * 10**9  # a file modified this close to its hashing is hashed again next time


@dataclass(frozen=True)
class Entry:
    path: str  # relative, with "/" separators
    executable: bool
    size: int
    sha: str  # sha256 of the content, hex

    @property
    def key(self) -> tuple[str, bool]:
        return self.sha, self.executable


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]  # sorted by path

    @property
    def digest(self) -> str:
        """The content hash of the whole workdir: every file's path, exec bit and content."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e.sha} {'x' if e.executable else '-'} {len(e.path.encode())}:{e.path}\n".encode())
        return h.hexdigest()

    @property
    def hash(self) -> str:
        """The short form that names the workdir's copies on the hosts."""
        return self.digest[:16]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def largest(self, n: int = 5) -> list[tuple[str, int]]:
        """The biggest top-level entries (a folder counts with everything under it)."""
        sizes: dict[str, int] = {}
        for e in self.entries:
            top = e.path.split("/", 1)
            name = top[0] + ("/" if len(top) > 1 else "")
            sizes[name] = sizes.get(name, 0) + e.size
        return sorted(sizes.items(), key=lambda item: -item[1])[:n]

    def to_json(self) -> dict:
        return {"hash": self.digest, "files": [[e.path, e.executable, e.size, e.sha] for e in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        return cls(tuple(Entry(p, bool(x), int(s), str(h)) for p, x, s, h in data["files"]))


def ignore_spec(workdir: Path) -> pathspec.PathSpec:
    lines = list(DEFAULT_IGNORES)
    try:
        lines += (workdir / IGNORE_FILE).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        pass
    return pathspec.GitIgnoreSpec.from_lines(lines)


def walk(workdir: Path) -> list[tuple[str, os.stat_result]]:
    """The workdir's files that are not ignored, as (relative path, stat), sorted by path.

    Folders holding a virtual environment (`pyvenv.cfg`) are left out whatever their name. A link to
    a file counts as that file; links to folders are not followed; sockets and pipes are skipped."""
    spec = ignore_spec(workdir)
    found: list[tuple[str, os.stat_result]] = []
    for root, dirs, names in os.walk(workdir):
        rel_root = os.path.relpath(root, workdir)
        prefix = "" if rel_root == "." else rel_root.replace(os.sep, "/") + "/"
        dirs[:] = sorted(
            d for d in dirs
            if not spec.match_file(f"{prefix}{d}/") and not os.path.exists(os.path.join(root, d, "pyvenv.cfg"))
            and not os.path.islink(os.path.join(root, d))
        )
        for name in sorted(names):
            rel = prefix + name
            if spec.match_file(rel):
                continue
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:  # a dangling link
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((rel, st))
    found.sort(key=lambda item: item[0])
    return found


class HashCache:
    """Content hashes by (size, mtime, inode), one JSON file per workdir under the launcher's cache."""

    def __init__(self, cache_dir: Path, workdir: Path) -> None:
        name = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir / "workdir-hashes" / f"{name}.json"
        try:
            self.known: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.fresh: dict[str, list] = {}

    def sha(self, path: Path, rel: str, st: os.stat_result) -> str:
        mark = [st.st_size, st.st_mtime_ns, st.st_ino]
        cached = self.known.get(rel)
        if cached and cached[:3] == mark:
            digest = cached[3]
        else:
            digest = _sha256(path)
        if time.time_ns() - st.st_mtime_ns > RACY_NS:  # else it could change again within the same mtime
            self.fresh[rel] = [*mark, digest]
        return digest

    def save(self) -> None:
        if self.fresh == self.known:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.fresh))
            tmp.replace(self.path)
        except OSError:  # only the next launch's speed depends on it
            pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def scan(workdir: Path, cache_dir: Path) -> Manifest:
    """The workdir's manifest, hashing only files that changed since the last scan."""
    cache = HashCache(cache_dir, workdir)
    entries = []
    for rel, st in walk(workdir):
        path = workdir / rel
        entries.append(Entry(rel, bool(st.st_mode & 0o100), st.st_size, cache.sha(path, rel, st)))
    cache.save()
    return Manifest(tuple(entries))


def size_warning(workdir: Path, manifest: Manifest) -> str | None:
    """A warning for a workdir over LARGE_BYTES: it travels to every host."""
    if manifest.total_bytes <= LARGE_BYTES:
        return None
    biggest = ", ".join(f"{name} {_size(n)}" for name, n in manifest.largest())
    return (f"warning: the workdir {workdir} holds {_size(manifest.total_bytes)} in {len(manifest.entries)} files "
            f"after ignores (largest: {biggest}); list what the job does not need in {workdir / IGNORE_FILE}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
