"""What a job's workdir holds, file by file, and one hash for all of it.

The files are those not excluded by the defaults below or the workdir's `.launchignore` (gitignore
syntax; a `!pattern` there can bring back a default). Each file is hashed by content; hashes are
remembered by size, mtime and inode (as git and rsync do), so an unchanged workdir of many files
costs a stat per file on each launch, not a read.

Symbolic links are never followed. A link whose target lies inside the workdir is kept as a link
(made relative, so it resolves in every copy); a link that leaves the workdir, or leads nowhere, is
left out and named in a warning: what it points to is not the job's to send.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from ..errors import SpecError
from ..node.contract import replace_file
from ..spec.yamlfile import read_user_file

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
    sha: str  # sha256 of the content (of the target, for a link), hex
    link: str | None = None  # a symbolic link's target, relative to its folder

    @property
    def key(self) -> tuple[str, bool, str | None]:
        return self.sha, self.executable, self.link


def link_entry(path: str, target: str) -> Entry:
    return Entry(path, False, 0, hashlib.sha256(target.encode()).hexdigest(), target)


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]  # sorted by path
    left_out: tuple[str, ...] = field(default=(), compare=False)  # links not kept, and why

    @property
    def digest(self) -> str:
        """The content hash of the whole workdir: every file's path, exec bit and content, every link's target."""
        h = hashlib.sha256()
        for e in self.entries:
            kind = "l" if e.link is not None else "x" if e.executable else "-"
            h.update(f"{e.sha} {kind} {len(e.path.encode())}:{e.path}\n".encode())
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
        return {"hash": self.digest,
                "files": [[e.path, e.executable, e.size, e.sha] + ([e.link] if e.link is not None else []) for e in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        return cls(tuple(Entry(str(row[0]), bool(row[1]), int(row[2]), str(row[3]), str(row[4]) if len(row) > 4 else None)
                         for row in data["files"]))


def ignore_spec(workdir: Path) -> pathspec.PathSpec:
    """The defaults and the workdir's `.launchignore`; SpecError when that file is unusable."""
    lines = list(DEFAULT_IGNORES)
    path = workdir / IGNORE_FILE
    if os.path.lexists(path):
        lines += read_user_file(path, str(path), follow=False).decode(errors="replace").splitlines()
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Found:
    path: str  # relative, with "/" separators
    stat: os.stat_result | None  # a regular file's (None for a link)
    link: str | None = None  # a kept link's target, relative to its folder


def walk(workdir: Path, skip: tuple[Path, ...] = ()) -> tuple[list[Found], list[str]]:
    """The workdir's regular files and kept links that are not ignored, sorted by path; and the
    links left out, each with why.

    Folders holding a virtual environment (`pyvenv.cfg`) are left out whatever their name, and the
    folders in `skip` (the runs folder, when it lies inside the workdir); links are not followed;
    sockets, pipes and devices are skipped."""
    spec = ignore_spec(workdir)
    skipped = {os.path.realpath(p) for p in skip}
    root_real = os.path.realpath(workdir)
    found: list[Found] = []
    left_out: list[str] = []
    for root, dirs, names in os.walk(workdir):
        rel_root = os.path.relpath(root, workdir)
        prefix = "" if rel_root == "." else rel_root.replace(os.sep, "/") + "/"
        linked = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = sorted(
            d for d in dirs
            if d not in linked and not spec.match_file(f"{prefix}{d}/")
            and not os.path.exists(os.path.join(root, d, "pyvenv.cfg"))
            and not (skipped and os.path.realpath(os.path.join(root, d)) in skipped)
        )
        for name in sorted(names + linked):
            rel = prefix + name
            path = os.path.join(root, name)
            if spec.match_file(rel) or (name in linked and spec.match_file(rel + "/")):
                continue
            try:
                st = os.lstat(path)
            except OSError:  # gone since it was listed
                continue
            if stat.S_ISLNK(st.st_mode):
                target, why = _kept_link(path, root_real)
                if target is None:
                    left_out.append(f"{rel} -> {why}")
                else:
                    found.append(Found(rel, None, target))
            elif stat.S_ISREG(st.st_mode):
                found.append(Found(rel, st))
    found.sort(key=lambda item: item.path)
    return found, left_out


def _kept_link(path: str, root_real: str) -> tuple[str | None, str]:
    """A link's target relative to its folder when it resolves inside the workdir; else None and why."""
    try:
        text = os.readlink(path)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    resolved = os.path.realpath(path)
    if os.path.commonpath([resolved, root_real]) != root_real or resolved == root_real:
        return None, f"{text}, outside the workdir"
    if not os.path.exists(resolved):
        return None, f"{text}, which does not exist"
    return os.path.relpath(resolved, os.path.realpath(os.path.dirname(path))), ""


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
            replace_file(str(self.path), json.dumps(self.fresh).encode())
        except OSError:  # only the next launch's speed depends on it
            pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def scan(workdir: Path, cache_dir: Path, skip: tuple[Path, ...] = ()) -> Manifest:
    """The workdir's manifest, hashing only files that changed since the last scan (`skip`: as `walk`)."""
    cache = HashCache(cache_dir, workdir)
    entries = []
    found, left_out = walk(workdir, skip)
    for item in found:
        if item.link is not None:
            entries.append(link_entry(item.path, item.link))
            continue
        st = item.stat
        assert st is not None
        try:
            digest = cache.sha(workdir / item.path, item.path, st)
        except FileNotFoundError:  # gone since the walk (another program's temporary file): not in the copy
            continue
        entries.append(Entry(item.path, bool(st.st_mode & 0o100), st.st_size, digest))
    cache.save()
    return Manifest(tuple(entries), tuple(left_out))


def link_warning(workdir: Path, manifest: Manifest) -> str | None:
    """A warning naming the links the workdir's copies leave out."""
    if not manifest.left_out:
        return None
    shown = "; ".join(manifest.left_out[:5]) + (f"; and {len(manifest.left_out) - 5} more" if len(manifest.left_out) > 5 else "")
    return (f"warning: {len(manifest.left_out)} link(s) in the workdir {workdir} lead outside it or nowhere and are "
            f"not in the ranks' copy of it: {shown}")


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
