"""The job's wheelhouse: the wheels its requirements add to the base image, resolved on this machine.

A base image often holds torch with its CUDA libraries already (several GB). Downloading and
installing those again would make every job image a second copy of its base, so this machine's pip
resolves the requirements against a stand-in for the base's Python (a venv holding only the base's
distribution metadata) and only what pip would add on top of the base is downloaded. The wheelhouse
is served to the build over loopback, so neither the build nor the hosts need an index, and this
machine's pip configuration (indexes, find-links, constraints) applies.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import RunError
from ..node.contract import replace_file

WHEELS_PORT = int(os.environ.get("LAUNCH_WHEELS_PORT", "29499"))
CACHE = Path(os.environ.get("LAUNCH_CACHE", Path.home() / ".cache" / "launch"))
BASE_TIMEOUT_S = 300  # a cold start of a multi-GB image on a slow disk, no more
_PINS = "base-versions.txt"  # in the stand-in venv: each base distribution as name==version

# Run by the base's python3: standard library only, it may be any Python >= 3.8.
_BASE_SCRIPT = r"""
import importlib.metadata, json, re, sys, sysconfig
seen, dists = set(), []
for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"]
    key = re.sub(r"[-_.]+", "-", name or "").lower()
    if not name or key in seen:  # the first on sys.path is the one Python imports
        continue
    seen.add(key)
    text = dist.read_text("METADATA")
    if text is None:  # an egg-info: its requirements live in requires.txt, not in PKG-INFO
        text = (dist.read_text("PKG-INFO") or "").partition("\n\n")[0].rstrip("\n") + "\n"
        text += "".join("Requires-Dist: %s\n" % r for r in dist.requires or [])
    head = text.partition("\n\n")[0]  # the headers; the long description is no use to a resolver
    dists.append({"name": name, "version": dist.version, "metadata": head.rstrip("\n") + "\n"})
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "platform": sysconfig.get_platform(),
                  "distributions": dists}))
"""


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    metadata: str  # the METADATA headers, Requires-Dist included


@dataclass(frozen=True)
class BaseEnv:
    """What the base image's `python3` has installed, as a resolver needs it."""

    image: str  # as the job names it
    id: str  # the image ID it was read from
    python: str  # "3.11"
    platform: str  # sysconfig.get_platform(), e.g. "linux-x86_64"
    distributions: tuple[Distribution, ...]


def base_environment(client, base: str) -> BaseEnv:
    """Read the base's installed distributions in a throwaway container (no network), pulling the
    base first if this machine lacks it; cached by image ID, so an unchanged base is read once."""
    image_id = _local_image(client, base).id
    cached = CACHE / "base-envs" / f"{_id_hex(image_id)}.json"
    if cached.exists():
        return _base_env(base, image_id, json.loads(cached.read_text()))
    data = json.loads(_run_in(client, base, image_id))
    _write_atomically(cached, json.dumps(data))
    return _base_env(base, image_id, data)


def resolve(requirements: Path, base_env: BaseEnv, say: Callable[[str], None]) -> Path:
    """The wheelhouse of exactly the distributions pip would install on top of the base, keeping the
    base's versions wherever the requirements allow (empty when the base satisfies them all);
    cached by the requirements' content and the base's ID."""
    here = _this_python()
    if (base_env.python, base_env.platform) != here:
        say(f"{base_env.image} has Python {base_env.python} on {base_env.platform}, this machine "
            f"{here[0]} on {here[1]}: downloading every requirement, those the base holds included")
        return _wheelhouse(requirements, say)
    digest = hashlib.sha256(requirements.read_bytes() + b"\0" + base_env.id.encode()).hexdigest()[:16]
    target = CACHE / "wheels" / digest
    if (target / ".complete").exists():
        return target
    say(f"resolving {requirements} on top of {base_env.image}")
    venv = _stand_in(base_env)
    try:
        adds = _dry_run(requirements, venv, venv / _PINS)
    except RunError:  # the requirements need other versions than the base's: let pip replace them
        adds = _dry_run(requirements, venv, None)
    _replace_dir(target, lambda tmp: _download(requirements, adds, tmp))
    say(_summary(requirements, base_env, adds))
    return target


def has_requirements(text: str) -> bool:
    """Whether a requirements file names anything (blank lines and comments do not count)."""
    return any(line.strip() and not line.strip().startswith("#") for line in text.splitlines())


def _wheelhouse(requirements: Path, say: Callable[[str], None]) -> Path:
    """Every wheel the requirements need, base or not, resolved on this machine; cached by their content."""
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    target = CACHE / "wheels" / key
    if (target / ".complete").exists():
        return target
    say(f"resolving {requirements} into a wheelhouse on this machine")
    _replace_dir(target, lambda tmp: _pip(requirements, "download", "--quiet", "--only-binary=:all:",
                                          "-d", str(tmp), "-r", str(requirements)))
    return target


def _local_image(client, base: str):
    import docker.errors

    try:
        return client.images.get(base)
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(base)
        return client.images.get(base)
    except docker.errors.DockerException as error:
        raise RunError(f"the base image {base} is not on this machine and pulling it failed: "
                       f"{_one_line(str(error))}") from None


def _run_in(client, base: str, image_id: str) -> str:
    """The base-reading script's output, from a container removed whatever happens."""
    import docker.errors
    import requests.exceptions

    no_python = f"the base image {base} has no python3 on its PATH; a job image needs one to install requirements and run ranks"
    try:
        container = client.containers.create(image_id, ["python3", "-c", _BASE_SCRIPT], entrypoint=[],
                                             network_disabled=True, labels={"launch.role": "base-probe"})
    except docker.errors.DockerException as error:
        raise RunError(f"reading the base image {base} failed: {_one_line(str(error))}") from None
    try:
        try:
            container.start()
        except docker.errors.APIError as error:  # the runtime could not exec python3
            raise RunError(no_python if "python3" in str(error) else
                           f"reading the base image {base} failed: {_one_line(str(error))}") from None
        try:
            status = container.wait(timeout=BASE_TIMEOUT_S)["StatusCode"]
        except requests.exceptions.RequestException:
            raise RunError(f"reading the base image {base}'s Python packages took over {BASE_TIMEOUT_S} s") from None
        out = container.logs(stdout=True, stderr=False).decode(errors="replace")
        err = container.logs(stdout=False, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    if status == 127:  # a shell or wrapper said "python3: not found"
        raise RunError(no_python)
    if status != 0 or not out.strip():
        raise RunError(f"reading the base image {base}'s Python packages failed (exit {status}): {_one_line(err)}")
    return out.strip().splitlines()[-1]


def _base_env(base: str, image_id: str, data: dict) -> BaseEnv:
    dists = tuple(Distribution(d["name"], d["version"], d["metadata"]) for d in data["distributions"])
    return BaseEnv(base, image_id, data["python"], data["platform"], dists)


def _stand_in(base_env: BaseEnv) -> Path:
    """A venv of this machine's Python whose site-packages holds the base's dist-infos and nothing
    else: pip, pointed at it with --python, sees the base's distributions as installed."""
    venv = CACHE / "base-envs" / f"{_id_hex(base_env.id)}.venv"
    if (venv / ".complete").exists() and (venv / "bin" / "python").exists():
        return venv

    def make(tmp: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True, capture_output=True)
        site = Path(subprocess.run([str(tmp / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   check=True, capture_output=True, text=True).stdout.strip())
        for dist in base_env.distributions:
            info = site / f"{_canonical(dist.name).replace('-', '_')}-{dist.version.replace('-', '_')}.dist-info"
            info.mkdir(parents=True, exist_ok=True)
            (info / "METADATA").write_text(dist.metadata)
            (info / "INSTALLER").write_text(f"the base image {base_env.image}\n")
        (tmp / _PINS).write_text("".join(f"{d.name}=={d.version}\n" for d in base_env.distributions))

    _replace_dir(venv, make)
    return venv


def _dry_run(requirements: Path, venv: Path, pins: Path | None) -> list[dict]:
    """pip's installation report's `install` list: what the venv (the base) lacks. `pins` (the
    base's versions, as constraints) keeps pip from choosing the newest torchvision and with it a
    new torch when the base's torch would do; this machine's own constraints apply besides."""
    with tempfile.TemporaryDirectory(prefix="launch-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        _pip(requirements, "--python", str(venv / "bin" / "python"), "install", "--dry-run", "--quiet",
             "--only-binary=:all:", "--report", str(report), *(["-c", str(pins)] if pins else []),
             "-r", str(requirements))
        return json.loads(report.read_text())["install"]


def _summary(requirements: Path, base_env: BaseEnv, adds: list[dict]) -> str:
    if not adds:
        return f"{base_env.image} satisfies {requirements}: no wheel to add"
    held = {_canonical(d.name): d.version for d in base_env.distributions}
    words = []
    for item in adds:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        old = held.get(_canonical(name))
        words.append(f"{name} {version}" + (f" (replacing the base's {old})" if old else ""))
    return f"{requirements} adds to {base_env.image}: {', '.join(words)}"


def _download(requirements: Path, items: list[dict], target: Path) -> None:
    if not items:
        return
    wanted = [item["download_info"]["url"] if item.get("is_direct") else
              f"{item['metadata']['name']}=={item['metadata']['version']}" for item in items]
    _pip(requirements, "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(target), *wanted)


def _pip(requirements: Path, *args: str) -> None:
    # This machine's pip configuration stays in effect: no --isolated.
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        # pip's first error names the requirement; its last one is often only a link to its docs
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
        reason = errors[0].strip() if errors else _one_line(result.stderr)
        raise RunError(f"{requirements}: pip could not resolve the requirements: {reason}")


def _replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Fill a fresh folder beside `target`, mark it complete, then move it into place, so that an
    interrupted or concurrent launch never sees half a folder as complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        (tmp / ".complete").touch()
        if target.exists() and not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another launch finished first: keep its copy
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(str(path), text.encode())


def _this_python() -> tuple[str, str]:
    return f"{sys.version_info.major}.{sys.version_info.minor}", sysconfig.get_platform()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _id_hex(image_id: str) -> str:
    return image_id.split(":")[-1]


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


class serve:
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
