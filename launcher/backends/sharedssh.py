"""The shared folder of a Slurm cluster whose login side is another host: reached over the login
host's SSH connection (commands there, and SFTP), as a lab host's disk is."""

from __future__ import annotations

import io
import stat
import tarfile
import threading
from pathlib import Path

import paramiko

from ..errors import RunError
from ..hosts.ssh import end_input, open_command, pipe_into, run, sftp_files
from ..image.build import CACHE
from ..node import contract
from ..plan import REMOTE_LIB, LaunchPlan
from ..sync import hosts as sync
from ..sync.manifest import Manifest
from .shared import CHUNK, MAX_READ, _size
from .slurmctl import SlurmCtl

# $0: the file; stdin: its content, made in place under another name, then renamed (private: 0600)
_WRITE = 'set -e; umask "$1"; mkdir -p "${0%/*}"; cat > "$0.partial.$$"; mv -f "$0.partial.$$" "$0"'
TIMEOUT_S = 60.0
_BUILD = {"apptainer": ["apptainer", "build"], "pyxis": ["enroot", "import", "--output"]}


class SshShared:
    """The shared folder as the login host sees it."""

    def __init__(self, ctl: SlurmCtl) -> None:
        self.ctl = ctl
        self.lock = threading.RLock()  # one SFTP request at a time: paramiko's client deadlocks when threads share it
        self.client: paramiko.SFTPClient | None = None

    @property
    def conn(self):
        return self.ctl.connection()

    def sftp(self) -> paramiko.SFTPClient:
        """The one SFTP session (callers hold `lock` while they use it)."""
        if self.client is None:
            self.client = self.conn.client.open_sftp()
            self.client.get_channel().settimeout(TIMEOUT_S)  # a login host gone silent fails a request, not the launcher
        return self.client

    def _run(self, argv: list[str], what: str, timeout: float = 120) -> str:
        code, out = run(self.conn, argv, timeout=timeout)
        if code != 0:
            raise RunError(f"slurm: login host {self.ctl.slurm.login}: {what}: {out.strip()[-300:]}")
        return out

    def copy_workdir(self, folder: str, workdir: Path, manifest: Manifest) -> str | None:
        cache = Path(CACHE) / "workdir-manifests"
        sync.remember(manifest, cache)
        transfer = sync.plan_for(self.conn, "login", folder, manifest, cache)
        if transfer.present:
            return None
        result = sync.send(self.conn, folder, workdir, manifest, transfer)
        return f"{len(transfer.send)} file(s), {_size(result.sent_bytes)}"

    def put_image(self, client, tag: str, path: str, container: str) -> str | None:
        """`docker save` streamed to the login host (then, for apptainer and pyxis, made into what they
        run, there); None when it was there."""
        if self.exists(path):
            return None
        archive = path if container == "docker" else f"{path.rsplit('.', 1)[0]}.tar"
        if not self.exists(archive):
            channel = open_command(self.conn, ["sh", "-c", _WRITE, archive, "022"])
            try:
                for chunk in client.images.get(tag).save(chunk_size=CHUNK, named=True):
                    channel.sendall(chunk)
                end_input(channel)
                code = channel.recv_exit_status()
            finally:
                channel.close()
            if code != 0:
                raise RunError(f"slurm: login host {self.ctl.slurm.login}: cannot write {archive}")
        if container != "docker":
            source = f"docker-archive://{archive}"
            self._run([*_BUILD[container], f"{path}.partial", source], f"making {path}", timeout=3600)
            self._run(["mv", "-f", f"{path}.partial", path], f"making {path}")
        with self.lock:
            return _size(self.sftp().stat(path).st_size or 0)

    def make_run(self, plan: LaunchPlan, helpers: list[tuple[Path, str]]) -> None:
        folders = []
        for node in plan.nodes:
            folders += [*contract.node_dirs(node.node_dir, node.host), node.checkpoint_dir, f"{node.state_dir}/{contract.STATE_WORK}"]
        leases = [f"{node.node_dir}/{contract.LEASE_FILE}" for node in plan.nodes]
        self._run(["sh", "-c", 'mkdir -p "$@"', "sh", *folders], "making the run's folders")
        self._run(["touch", *leases], "making the run's leases")
        if helpers:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                for path, name in helpers:
                    tar.add(path, arcname=f"{REMOTE_LIB}/{name}")
            for node in plan.nodes:
                code, out = pipe_into(self.conn, ["tar", "-xz", "-C", node.node_dir], buffer.getvalue())
                if code != 0:
                    raise RunError(f"slurm: login host {self.ctl.slurm.login}: cannot unpack the helpers: {out.strip()[-200:]}")

    def write(self, path: str, data: bytes, private: bool = False) -> None:
        code, out = pipe_into(self.conn, ["sh", "-c", _WRITE, path, "077" if private else "022"], data)
        if code != 0:
            raise RunError(f"slurm: login host {self.ctl.slurm.login}: cannot write {path}: {out.strip()[-200:]}")

    def append(self, path: str, data: bytes) -> None:
        pipe_into(self.conn, ["sh", "-c", 'cat >> "$0"', path], data)

    def read(self, path: str) -> bytes:
        with self.lock:
            try:
                with self.sftp().open(path, "rb") as fh:
                    return fh.read()
            except (IOError, EOFError, paramiko.SSHException) as exc:
                raise OSError(str(exc)) from None

    def read_from(self, path: str, offset: int) -> bytes:
        with self.lock:
            try:
                with self.sftp().open(path, "rb") as fh:
                    fh.seek(offset)
                    return fh.read(MAX_READ)
            except FileNotFoundError:
                return b""
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise RunError(f"slurm: login host {self.ctl.slurm.login}: cannot read {path}: {exc}") from None

    def touch(self, path: str) -> None:
        with self.lock:
            try:
                self.sftp().utime(path, None)
            except FileNotFoundError:
                self.sftp().open(path, "a").close()

    def exists(self, path: str) -> bool:
        with self.lock:
            try:
                self.sftp().stat(path)
                return True
            except FileNotFoundError:
                return False

    def remove(self, path: str) -> None:
        with self.lock:
            try:
                self.sftp().remove(path)
            except FileNotFoundError:
                pass

    def names(self, folder: str) -> list[str]:
        with self.lock:
            try:
                return sorted(self.sftp().listdir(folder))
            except OSError:
                return []

    def walk(self, folder: str) -> list[tuple[str, int]]:
        with self.lock:
            return sftp_files(self.sftp(), folder)

    def fetch(self, path: str, target: Path) -> None:
        with self.lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.sftp().get(path, str(target))

    def fetch_files(self, folder: str, target: Path) -> None:
        with self.lock:
            target.mkdir(parents=True, exist_ok=True)
            try:
                entries = self.sftp().listdir_attr(folder)
            except FileNotFoundError:
                return
            for entry in entries:
                if stat.S_ISREG(entry.st_mode or 0) and not entry.filename.endswith(".tmp"):
                    self.sftp().get(f"{folder}/{entry.filename}", str(target / entry.filename))
