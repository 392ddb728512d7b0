"""A Slurm cluster's shared folder, as the launcher uses it: the job's code and image put there
once (named by their content), each run's folders made, its nodes' files read back.

Seen from this machine when the inventory's `login` is `local`; otherwise reached through the login
host over SSH (`SshShared`)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import RunError
from ..image.build import CACHE
from ..node import contract
from ..node.contract import replace_file
from ..plan import REMOTE_LIB, LaunchPlan
from ..sync import hosts as sync
from ..sync.manifest import Manifest

if TYPE_CHECKING:
    from ..spec import SlurmSpec
    from .slurmctl import SlurmCtl

CHUNK = 8 << 20
MAX_READ = 8 << 20  # a node's output is read this much at a time


class SharedFolder(Protocol):
    def copy_workdir(self, folder: str, workdir: Path, manifest: Manifest) -> str | None: ...
    def put_image(self, client, tag: str, path: str, container: str) -> str | None: ...
    def make_run(self, plan: LaunchPlan, helpers: list[tuple[Path, str]]) -> None: ...
    def write(self, path: str, data: bytes, private: bool = False) -> None: ...
    def append(self, path: str, data: bytes) -> None: ...
    def read(self, path: str) -> bytes: ...
    def read_from(self, path: str, offset: int) -> bytes: ...
    def touch(self, path: str) -> None: ...
    def exists(self, path: str) -> bool: ...
    def remove(self, path: str) -> None: ...
    def names(self, folder: str) -> list[str]: ...
    def walk(self, folder: str) -> list[tuple[str, int]]: ...
    def fetch(self, path: str, target: Path) -> None: ...
    def fetch_files(self, folder: str, target: Path) -> None: ...


def shared_folder(slurm: "SlurmSpec", ctl: "SlurmCtl") -> SharedFolder:
    if slurm.is_local:
        return LocalShared()
    from .sharedssh import SshShared  # the SSH library only for a login host

    return SshShared(ctl)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


class LocalShared:
    """The shared folder as this machine sees it (login: local)."""

    def copy_workdir(self, folder: str, workdir: Path, manifest: Manifest) -> str | None:
        sync.remember(manifest, Path(CACHE) / "workdir-manifests")
        result = sync.copy_here(folder, workdir, manifest, Path(CACHE) / "workdir-manifests")
        if result.transfer.present:
            return None
        return f"{len(result.transfer.send)} file(s), {_size(result.sent_bytes)}"

    def put_image(self, client, tag: str, path: str, container: str) -> str | None:
        """The image where every node finds it: a `docker save` archive (docker), a .sif (apptainer)
        or a squashfs (pyxis), made once; None when it was there."""
        if os.path.exists(path):
            return None
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.partial-{os.getpid()}"
        try:
            if container == "docker":
                with open(partial, "wb") as out:
                    for chunk in client.images.get(tag).save(chunk_size=CHUNK, named=True):
                        out.write(chunk)
            elif container == "apptainer":
                _tool(["apptainer", "build", partial, f"docker-daemon://{tag}"], "apptainer")
            else:
                _tool(["enroot", "import", "--output", partial, f"dockerd://{tag}"], "enroot")
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return _size(os.path.getsize(path))

    def make_run(self, plan: LaunchPlan, helpers: list[tuple[Path, str]]) -> None:
        """Every node's folders (Slurm fails a job whose output folder is missing), its lease, and
        for runtime: host, what ships with the ranks."""
        for node in plan.nodes:
            for folder in (*contract.node_dirs(node.node_dir, node.host), node.checkpoint_dir,
                           f"{node.state_dir}/{contract.STATE_WORK}"):
                os.makedirs(folder, exist_ok=True)
            self.touch(f"{node.node_dir}/{contract.LEASE_FILE}")
            for path, name in helpers:
                target = f"{node.node_dir}/{REMOTE_LIB}/{name}"
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(path, target)

    def write(self, path: str, data: bytes, private: bool = False) -> None:
        if private:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return
        replace_file(path, data)

    def append(self, path: str, data: bytes) -> None:
        with open(path, "ab") as out:
            out.write(data)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    def read_from(self, path: str, offset: int) -> bytes:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read(MAX_READ)
        except OSError:
            return b""

    def touch(self, path: str) -> None:
        with open(path, "a"):
            pass
        os.utime(path, None)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def names(self, folder: str) -> list[str]:
        try:
            return sorted(os.listdir(folder))
        except OSError:
            return []

    def walk(self, folder: str) -> list[tuple[str, int]]:
        found = []
        for root, _, files in os.walk(folder):  # links are not followed, nor brought back
            for name in files:
                path = Path(root) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((path.relative_to(folder).as_posix(), st.st_size))
        return found

    def fetch(self, path: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    def fetch_files(self, folder: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for name in self.names(folder):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path) and not name.endswith(".tmp"):
                shutil.copyfile(path, target / name)


def _tool(argv: list[str], name: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise RunError(f"slurm: container: {name} is not installed on the login side") from None
    if done.returncode != 0:
        raise RunError(f"slurm: {' '.join(argv[:2])} failed: {done.stderr.strip()[-300:]}")
