"""The job's image, built with the Docker SDK from the top-level Dockerfile.

The tag is a hash of every input (base, requirements, the launcher's in-rank files, the job's
workdir), so an unchanged job is never rebuilt. The job's code is the last layer: a code edit
rebuilds and re-ships only that layer. Requirements are resolved into a wheelhouse on this machine
(`pip download`, with this machine's pip configuration) and served to the build over loopback, so
neither the build nor the hosts need the internet, and no wheel lands in a layer.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import RunError
from ..spec import JobSpec

PACKAGE = Path(__file__).resolve().parent.parent  # launcher/
DOCKERFILE = PACKAGE.parent / "Dockerfile"
IGNORED = {".git", "__pycache__", ".pytest_cache", "runs", ".venv", ".mypy_cache"}
WHEELS_PORT = int(os.environ.get("LAUNCH_WHEELS_PORT", "29499"))
CACHE = Path(os.environ.get("LAUNCH_CACHE", Path.home() / ".cache" / "launch"))


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    id: str
    built: bool  # False when an image with this tag was there already


def shipped_files() -> list[tuple[Path, str]]:
    """What goes into every image and onto every host beside the ranks: `launcher.node` (standard
    library only, with its `startup/` folder) and the package's import-free `__init__`, as (file,
    path under the lib folder)."""
    files = [PACKAGE / "__init__.py", *sorted((PACKAGE / "node").rglob("*.py"))]
    return [(path, str(path.relative_to(PACKAGE.parent))) for path in files]


def workdir_files(workdir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(workdir):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED)
        files += [Path(root) / n for n in sorted(names) if not n.endswith(".pyc")]
    return files


def image_tag(job: JobSpec) -> str:
    """`launch/<job>:<hash>`: the same inputs always give the same tag."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("dockerfile", DOCKERFILE.read_bytes())
    add("base", job.image.base.encode())
    add("requirements", job.image.requirements.read_bytes() if job.image.requirements else b"")
    for path, name in shipped_files():
        add(name, path.read_bytes())
    for path in workdir_files(job.workdir):
        mode = "x" if os.access(path, os.X_OK) else "-"
        add(f"job/{path.relative_to(job.workdir)}:{mode}", path.read_bytes())
    return f"launch/{repository_name(job.name)}:{digest.hexdigest()[:16]}"


def repository_name(name: str) -> str:
    """A job name as Docker accepts it in a repository: lower case, single separators inside."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return cleaned or "job"


def build_image(job: JobSpec, client, say: Callable[[str], None]) -> BuiltImage:
    """Build the job's image unless its tag exists; return its tag and ID."""
    import docker.errors

    tag = image_tag(job)
    try:
        return BuiltImage(tag, client.images.get(tag).id, built=False)
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="launch-build-") as tmp:
        context = Path(tmp)
        shutil.copy(DOCKERFILE, context / "Dockerfile")
        requirements = job.image.requirements.read_text() if job.image.requirements else ""
        (context / "requirements.txt").write_text(requirements)
        for path, name in shipped_files():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, context / name)
        for path in workdir_files(job.workdir):
            dest = context / "job" / path.relative_to(job.workdir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        (context / "job").mkdir(exist_ok=True)
        wheels = _wheelhouse(job.image.requirements, say) if _has_requirements(requirements) else None
        say(f"building {tag} on {job.image.base}")
        with _serve(wheels) as url:
            _run_build(client, context, tag, {"BASE": job.image.base, **({"WHEELS_URL": url} if url else {})})
    return BuiltImage(tag, client.images.get(tag).id, built=True)


def _has_requirements(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("#") for line in text.splitlines())


def _wheelhouse(requirements: Path, say: Callable[[str], None]) -> Path:
    """Every wheel the requirements need, resolved on this machine; cached by their content."""
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    target = CACHE / "wheels" / key
    if (target / ".complete").exists():
        return target
    say(f"resolving {requirements} into a wheelhouse on this machine")
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(target), "-r", str(requirements)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RunError(f"{requirements}: pip could not resolve the requirements: {result.stderr.strip().splitlines()[-1:]}")
    (target / ".complete").touch()
    return target


class _serve:
    """Serve a wheelhouse on loopback for the length of a build (the build runs with host networking)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.server: http.server.ThreadingHTTPServer | None = None

    def __enter__(self) -> str | None:
        if self.directory is None:
            return None
        handler = functools.partial(_QuietHandler, directory=str(self.directory))
        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELS_PORT), handler)
        except OSError:  # the usual port is taken: any port works, only the build cache suffers
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __exit__(self, *_: object) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


def _run_build(client, context: Path, tag: str, buildargs: dict[str, str]) -> None:
    lines: list[str] = []
    for chunk in client.api.build(path=str(context), tag=tag, buildargs=buildargs, network_mode="host",
                                  rm=True, forcerm=True, decode=True):
        if "stream" in chunk:
            lines += chunk["stream"].splitlines()
        if "error" in chunk:
            tail = " | ".join(line for line in lines[-5:] if line.strip())
            raise RunError(f"building {tag} failed: {chunk['error'].strip()} ({tail})")
