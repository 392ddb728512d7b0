"""A run's own folder on a node: its checkpoints and the ranks' working directory.

Every run of a job gets a folder of its own on every host (`contract.STATE_CHECKPOINTS` and
`contract.STATE_WORK` inside it), so no run ever empties or shares another's files:
- `prepare` fills the working directory before the first attempt: what the run it resumes from
  kept (its checkpoints and the files its ranks wrote), then the job's code on top, and notes
  what the code is;
- `finish` takes the unchanged code out again when the node's part ends, so that what is left
  in the working directory is exactly what the run wrote: its outputs, which the launcher
  brings back and a later `--resume` starts from.
Nothing here deletes a file the job wrote. Standard library only (it runs on the nodes).
"""

from __future__ import annotations

import json
import os
import shutil

from . import contract

CODE_RECORD = ".launch-code.json"  # in the run's folder: the code files as copied, (size, mtime_ns) by path


def prepare(state_dir: str, code_from: str, code_list: str = "", resume_from: str = "", work: str = "") -> dict[str, int]:
    """Make the run's checkpoint folder and working directory; return how many files came from the
    run resumed from, by kind. `code_list`: a workdir record (`files` rows of path first) naming
    the files of `code_from` that are the code; empty: all of `code_from` is. `work`: where the
    working directory is seen, when not inside `state_dir` (a container's mount of it)."""
    checkpoints, work = state_paths(state_dir, work)
    os.makedirs(checkpoints, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    resumed = {"checkpoints": 0, "work": 0}
    if resume_from:
        old_checkpoints, old_work = state_paths(resume_from)
        resumed["checkpoints"] = _copy_tree(old_checkpoints, checkpoints)
        resumed["work"] = _copy_tree(old_work, work)
    code = _code_files(code_from, code_list)
    copied: dict[str, list[int]] = {}
    for rel in code:
        target = os.path.join(work, rel)
        _copy_one(os.path.join(code_from, rel), target)
        st = os.lstat(target)
        copied[rel] = [st.st_size, st.st_mtime_ns]
    with open(os.path.join(state_dir, CODE_RECORD), "w") as fh:
        json.dump(copied, fh)
    return resumed


def finish(state_dir: str, work: str = "") -> dict[str, int]:
    """Take the code that no rank changed out of the working directory (and folders left empty);
    return what the run keeps: files in its checkpoint folder and in its working directory."""
    checkpoints, work = state_paths(state_dir, work)
    try:
        with open(os.path.join(state_dir, CODE_RECORD)) as fh:
            code = json.load(fh)
    except (OSError, ValueError):
        code = {}
    for rel, (size, mtime_ns) in code.items():
        path = os.path.join(work, rel)
        try:
            st = os.lstat(path)
            if st.st_size == size and st.st_mtime_ns == mtime_ns:
                os.unlink(path)
        except OSError:
            continue
    for root, dirs, files in os.walk(work, topdown=False):
        if root != work and not os.listdir(root):
            try:
                os.rmdir(root)
            except OSError:
                pass
    try:
        os.unlink(os.path.join(state_dir, CODE_RECORD))
    except OSError:
        pass
    kept = {"checkpoints": _count(checkpoints), "work": _count(work)}
    if not any(kept.values()):  # a run that kept nothing leaves no folder (where it is not a mount point)
        for folder in (checkpoints, work, state_dir):
            try:
                os.rmdir(folder)
            except OSError:
                pass
    return kept


def state_paths(state_dir: str, work: str = "") -> tuple[str, str]:
    """The checkpoint folder and the working directory in a run's folder (or `work`, where that is seen)."""
    return os.path.join(state_dir, contract.STATE_CHECKPOINTS), work or os.path.join(state_dir, contract.STATE_WORK)


def _code_files(code_from: str, code_list: str) -> list[str]:
    if code_list:
        with open(code_list) as fh:
            return [str(row[0]) for row in json.load(fh)["files"]]
    found = []
    for root, dirs, files in os.walk(code_from):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            found.append(os.path.relpath(os.path.join(root, name), code_from))
    return found


def _copy_one(source: str, target: str) -> None:
    """A file or a symbolic link (kept as a link), replacing what `target` holds."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target) and (os.path.islink(target) or not os.path.isdir(target)):
        os.unlink(target)
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
    else:
        shutil.copy2(source, target)
        os.chmod(target, os.stat(target).st_mode | 0o200)  # the run may write its copy (the host's copy is read-only)


def _copy_tree(source: str, target: str) -> int:
    """Copy what `source` holds into `target` (which exists); the number of files copied."""
    if not os.path.isdir(source):
        return 0
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    return _count(target)


def _count(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))
