"""The job's image, built with the Docker SDK from the top-level Dockerfile.

The image holds the base, the job's requirements and the launcher's in-rank files; the job's workdir
is not in it but copied to each host apart (`launcher.sync`), so a code edit builds and ships
nothing. The tag is a hash of every input (base, requirements, in-rank files), so an unchanged
image is never rebuilt. What the requirements add to the base is resolved on this machine
(`wheels.py`) and served to the build over loopback, so neither the build nor the hosts need the
internet, and no wheel lands in a layer.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import RunError
from ..spec import JobSpec
from . import wheels
from .wheels import base_environment, has_requirements, resolve, serve

PACKAGE = Path(__file__).resolve().parent.parent  # launcher/
DOCKERFILE = PACKAGE.parent / "Dockerfile"
CACHE = wheels.CACHE  # the launcher's cache folder (LAUNCH_CACHE), where deploy and conduct look for it


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
        wheels = (resolve(job.image.requirements, base_environment(client, job.image.base), say)
                  if has_requirements(requirements) else None)  # served even when empty: the install step reads it
        say(f"building {tag} on {job.image.base}")
        with serve(wheels) as url:
            _run_build(client, context, tag, {"BASE": job.image.base, **({"WHEELS_URL": url} if url else {})})
    return BuiltImage(tag, client.images.get(tag).id, built=True)


def _run_build(client, context: Path, tag: str, buildargs: dict[str, str]) -> None:
    lines: list[str] = []
    for chunk in client.api.build(path=str(context), tag=tag, buildargs=buildargs, network_mode="host",
                                  rm=True, forcerm=True, decode=True):
        if "stream" in chunk:
            lines += chunk["stream"].splitlines()
        if "error" in chunk:
            tail = " | ".join(line for line in lines[-5:] if line.strip())
            raise RunError(f"building {tag} failed: {chunk['error'].strip()} ({tail})")


STREAM_TIMEOUT_S = 1800  # the Docker SDK's read timeout: a build step or a save stream may be silent this long


def build_here(job: JobSpec, say: Callable[[str], None], phases) -> tuple[object, BuiltImage]:
    """This machine's Docker engine, and the job's image built there unless it exists (timed as the
    `build` phase): what every backend that runs containers starts from."""
    import docker

    try:
        # Builds and `docker save` streams can be silent for minutes on images of several GB: the
        # SDK's default 60 s read timeout would end them with a traceback.
        client = docker.from_env(timeout=STREAM_TIMEOUT_S)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - the SDK raises several kinds
        raise RunError(f"cannot reach this machine's Docker engine to build the job's image: {exc}") from None
    with phases.timing("build"):
        image = build_image(job, client, say)
    say(f"image {image.tag} ({'built' if image.built else 'unchanged'})")
    return client, image
