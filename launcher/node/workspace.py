"""A run's own folder on a node: its checkpoints and the ranks' working directory.

Every run of a job gets a folder of its own on every host (`contract.STATE_CHECKPOINTS` and
`contract.STATE_WORK` inside it), so no run ever empties or shares another's files:
- `prepare` fills the working directory before the first attempt: what the run it resumes from
  kept (its checkpoints and the files its ranks wrote), then the job's code on top, and notes
  what the code is; when it cannot, it takes out what it copied (nothing there is the job's yet);
- `finish` takes the unchanged code out again when the node's part ends, so that what is left
  in the working directory is exactly what the run wrote: its outputs, which the launcher
  brings back and a later `--resume` starts from.
Nothing here deletes a file the job wrote, nor follows a link out of the run's folder.
Standard library only (it runs on the nodes).
"""

from __future__ import annotations

import json
import os
import shutil

from . import contract

CODE_RECORD = ".launch-code.json"  # in the run's folder: the code files as copied, (size, mtime_ns) by path


def prepare(state_dir: str, code_from: str, code_list: str = "", resume_from: str = "", work: str = "") -> dict[str, int]:
    """Make the run's checkpoint folder and working directory; return how many files came from the
    run resumed from, by kind. `code_list`: a workdir record (`files` rows: path first, a link's
    target fifth) naming the files of `code_from` that are the code; empty: all of `code_from` is.
    `work`: where the working directory is seen, when not inside `state_dir` (a container's mount)."""
    checkpoints, work = state_paths(state_dir, work)
    os.makedirs(checkpoints, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    try:
        resumed = {"checkpoints": 0, "work": 0}
        if resume_from:
            old_checkpoints, old_work = state_paths(resume_from)
            resumed["checkpoints"] = _copy_tree(old_checkpoints, checkpoints)
            resumed["work"] = _copy_tree(old_work, work)
        copied: dict[str, list[int]] = {}
        for rel, link in _code_files(code_from, code_list):
            target = _clear_way(work, rel)
            if link is not None:
                os.symlink(link, target)
            else:
                try:
                    shutil.copy2(os.path.join(code_from, rel), target)
                except FileNotFoundError:  # gone since the launcher listed it (a one-box workdir is live): not code now
                    continue
                os.chmod(target, os.stat(target).st_mode | 0o200)  # the run may write its copy (the host's is read-only)
            st = os.lstat(target)
            copied[rel] = [st.st_size, st.st_mtime_ns]
        contract.replace_file(os.path.join(state_dir, CODE_RECORD), json.dumps(copied).encode())
    except BaseException:
        discard(state_dir, work)
        raise
    return resumed


def finish(state_dir: str, work: str = "") -> dict[str, int] | None:
    """Take the code that no rank changed out of the working directory (and the code's folders left empty);
    return what the run keeps: files in its checkpoint folder and in its working directory (None
    when that cannot be told: then nothing more is taken out)."""
    checkpoints, work = state_paths(state_dir, work)
    record = os.path.join(state_dir, CODE_RECORD)
    try:
        with open(record) as fh:
            code = json.load(fh)
    except (OSError, ValueError):
        code = {}
    try:
        for rel, (size, mtime_ns) in code.items():
            path = os.path.join(work, rel)
            if not _inside(work, os.path.dirname(path)):  # the job put a link on the way: not ours to follow
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_size == size and st.st_mtime_ns == mtime_ns:
                os.unlink(path)
        folders = {os.path.dirname(rel) for rel in code} - {""}
        for folder in sorted({"/".join(f.split("/")[:i + 1]) for f in folders for i in range(f.count("/") + 1)},
                             key=lambda f: -f.count("/")):
            path = os.path.join(work, folder)
            if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
                os.rmdir(path)
        if os.path.exists(record):
            os.unlink(record)
        kept = {"checkpoints": _count(checkpoints), "work": _count(work)}
    except OSError:
        return None
    if not any(kept.values()):  # a run that kept nothing leaves no folder (where it is not a mount point)
        for folder in (checkpoints, work, state_dir):
            try:
                os.rmdir(folder)
            except OSError:
                pass
    return kept


def discard(state_dir: str, work: str = "") -> None:
    """Empty a run's folder that `prepare` could not finish: what is there are copies, nothing of the job's."""
    for folder in state_paths(state_dir, work):
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def state_paths(state_dir: str, work: str = "") -> tuple[str, str]:
    """The checkpoint folder and the working directory in a run's folder (or `work`, where that is seen)."""
    return os.path.join(state_dir, contract.STATE_CHECKPOINTS), work or os.path.join(state_dir, contract.STATE_WORK)


def _code_files(code_from: str, code_list: str) -> list[tuple[str, str | None]]:
    """The code's files as (path, None), and its links as (path, target): from the workdir record
    (whose targets are made relative, so that they resolve in every copy), else all of `code_from`."""
    if code_list:
        with open(code_list) as fh:
            return [(str(row[0]), str(row[4]) if len(row) > 4 else None) for row in json.load(fh)["files"]]
    found: list[tuple[str, str | None]] = []
    for root, dirs, files in os.walk(code_from):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            found.append((os.path.relpath(path, code_from), os.readlink(path) if os.path.islink(path) else None))
    return found


def _clear_way(work: str, rel: str) -> str:
    """`work/rel`, free to be written: a link or a file where the code has a folder on the way, or a
    folder where it has a file, goes (all copies, from the run resumed from); links are never followed."""
    target = os.path.join(work, rel)
    folder = work
    for part in os.path.dirname(rel).split("/") if os.path.dirname(rel) else ():
        folder = os.path.join(folder, part)
        if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
            os.unlink(folder)
        os.makedirs(folder, exist_ok=True)
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    elif os.path.lexists(target):
        os.unlink(target)
    return target


def _inside(work: str, path: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(work)
    return real == root or real.startswith(root + os.sep)


def _copy_tree(source: str, target: str) -> int:
    """Copy what `source` holds into `target` (which exists); the number of files copied."""
    if not os.path.isdir(source):
        return 0
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    return _count(target)


def _count(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def next_attempt(log_dir: str) -> int:
    """The attempt a node's part starts with: 0, or after an earlier start of the same part (a
    scheduler requeued the job) the one after its last, so that every attempt's logs are kept."""
    try:
        with open(os.path.join(log_dir, contract.NODE_STATUS)) as fh:
            return int(json.load(fh).get("restarts", 0)) + 1
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
