"""job.yaml, one training job: what it runs, where from, with what (README: "What you write",
"`job.yaml`: one training job")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError
from ..node import contract
from .cluster import _NAME, MAX_NPROC_PER_NODE
from .fields import Section
from .yamlfile import load_mapping, shown_path

BACKENDS = ["auto", "gloo", "nccl"]
RUNTIMES = ["docker", "host"]
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
MAX_RESTARTS = 1000
MAX_TIMEOUT_S = 366 * 24 * 3600.0
MAX_WARMUP_STEPS = 1_000_000
# set by the launcher or torchrun for every rank: a job may not set them in `env`
OWNED_ENV = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
             "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
             "TORCHELASTIC_MAX_RESTARTS", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
DEFAULT_HANG_WARNING_S = 600.0
DEFAULT_WARMUP_STEPS = 3  # compilation, caches and the first all-reduce make the first steps slow
DEFAULT_OUTPUTS = ("*",)  # every file the ranks wrote in their working directory
DEFAULT_OUTPUTS_LIMIT = 1000 ** 3  # bytes of outputs brought back per host: 1 GB
MAX_OUTPUTS_LIMIT = 1000 ** 4


@dataclass(frozen=True)
class ImageSpec:
    base: str = "python:3.11-slim"
    requirements: Path | None = None


@dataclass(frozen=True)
class JobSpec:
    path: Path
    name: str
    cluster: Path | None  # None: not named in the file
    command: tuple[str, ...]
    workdir: Path
    nodes: int | None = None
    nproc_per_node: int | str = "auto"
    backend: str = "auto"
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    image: ImageSpec = field(default_factory=ImageSpec)
    runtime: str = "docker"
    rdzv_port: int | None = None  # None: 29500 on a lab, a free port for a one-box run
    max_restarts: int = 0
    timeout_s: float | None = None
    scaling: tuple[int, ...] = ()
    warmup_steps: int = DEFAULT_WARMUP_STEPS  # steps per rank left out of throughput and step times
    resume: bool = False  # start from the newest earlier run's checkpoints and outputs (as --resume does)
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS  # what the ranks write in their working directory that comes back
    outputs_limit: int = DEFAULT_OUTPUTS_LIMIT  # bytes per host brought back; the rest stays on the host
    hang_warning_s: float | None = DEFAULT_HANG_WARNING_S  # say so when no rank prints or writes a metric this long


def load_job(path: Path) -> JobSpec:
    """Load and check a job file on its own; cross-checks with an inventory are in `select_hosts`."""
    path = shown_path(path)
    label = str(path)
    top = Section(label, load_mapping(path, label))
    top.check_keys(
        ["name", "cluster", "nodes", "nproc_per_node", "backend", "workdir", "command", "env", "secrets",
         "image", "runtime", "rdzv_port", "max_restarts", "timeout", "scaling", "warmup_steps", "resume", "hang_warning",
         "outputs", "outputs_limit"],
        required=["command"],
    )
    folder = path.parent
    name = top.string("name", _default_name(folder), pattern=_NAME, what="a name of letters, digits, '.', '_' or '-'")
    command = top.string_list("command")
    if not command:
        raise top.expected("command", "a non-empty list, e.g. [python, train.py]", [])
    workdir = folder / top.string("workdir", ".")
    if not workdir.is_dir():
        raise top.fail("workdir", f"'{top.get('workdir', '.')}' is not a directory (resolved to {shown_path(workdir)})")
    workdir = workdir.resolve()
    home = Path.home().resolve()
    if workdir == home or workdir in home.parents:
        what = "the root folder" if workdir == Path("/") else "your home folder" if workdir == home else f"a folder above {home}"
        raise top.fail("workdir", f"'{top.get('workdir', '.')}' is {what}; the workdir is copied to every host, so give it the job's own folder")
    nproc = top.get("nproc_per_node", "auto")
    if nproc != "auto":
        if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= MAX_NPROC_PER_NODE:
            raise top.expected("nproc_per_node", f"an integer from 1 to {MAX_NPROC_PER_NODE}, or 'auto'", nproc)
    return JobSpec(
        path=path,
        name=name,
        cluster=folder / cluster if (cluster := top.string("cluster", None)) else None,
        command=tuple(command),
        workdir=workdir,
        nodes=top.integer("nodes", None, minimum=1),
        nproc_per_node=nproc,
        backend=top.choice("backend", BACKENDS, "auto"),
        env=_env(top),
        secrets=_secrets(top),
        image=_image(top.section("image"), folder),
        runtime=top.choice("runtime", RUNTIMES, "docker"),
        rdzv_port=top.integer("rdzv_port", None, minimum=1, maximum=65534),  # + 1: the node supervisors
        max_restarts=top.integer("max_restarts", 0, minimum=0, maximum=MAX_RESTARTS),
        timeout_s=top.duration("timeout", None, maximum=MAX_TIMEOUT_S),
        scaling=_scaling(top),
        warmup_steps=top.integer("warmup_steps", DEFAULT_WARMUP_STEPS, minimum=0, maximum=MAX_WARMUP_STEPS),
        resume=top.boolean("resume", False),
        outputs=_outputs(top),
        outputs_limit=_size(top, "outputs_limit", DEFAULT_OUTPUTS_LIMIT),
        hang_warning_s=_hang_warning(top),
    )


def _outputs(top: Section) -> tuple[str, ...]:
    """Glob patterns relative to the ranks' working directory (`*` crosses folders)."""
    patterns = top.string_list("outputs", list(DEFAULT_OUTPUTS))
    for i, pattern in enumerate(patterns):
        if not pattern or pattern.startswith("/") or ".." in pattern.split("/"):
            raise top.expected(f"outputs[{i}]", "a glob relative to the working directory, such as '*.pt' or 'out/*'", pattern)
    return tuple(patterns)


def _size(top: Section, name: str, default: int) -> int:
    """A size in bytes: an integer, or a number with a unit: kB, MB, GB, TB (powers of 1000) or KiB,
    MiB, GiB, TiB (powers of 1024)."""
    value = top.get(name, default)
    match = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,6})?)\s*(?:([KMGT])(i?)B?|B)?\s*", str(value), re.IGNORECASE) if not isinstance(value, bool) else None
    if not match:
        raise top.expected(name, "a size such as 500MB or 2GB", value)
    power = " KMGT".index(match.group(2).upper()) if match.group(2) else 0
    size = int(float(match.group(1)) * (1024 if match.group(3) else 1000) ** power)
    if size > MAX_OUTPUTS_LIMIT:
        raise top.expected(name, "a size of at most 1TB", value)
    return size


def _hang_warning(top: Section) -> float | None:
    """`hang_warning: 10m` (the default), or `false` to never say it."""
    if top.get("hang_warning", None) is False:
        return None
    return top.duration("hang_warning", DEFAULT_HANG_WARNING_S, maximum=MAX_TIMEOUT_S)


def _default_name(folder: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", folder.resolve().name).lstrip("._-")
    return name or "job"


def _env(top: Section) -> dict[str, str]:
    env = top.get("env", {})
    if not isinstance(env, dict):
        raise top.expected("env", "a mapping of variable names to strings", env)
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not re.fullmatch(_ENV_NAME, key):
            raise top.expected("env", "variable names of letters, digits and '_'", key)
        check_env_name(key, f"{top.label}: env.{key}")
        out[key] = top.argv_item(f"env.{key}", value)
    return out


def check_env_name(key: str, where: str) -> None:
    """SpecError when a job may not set `key` for its ranks (`where` names the file and key, or the flag)."""
    if not re.fullmatch(_ENV_NAME, key):
        raise SpecError(f"{where}: expected a variable name of letters, digits and '_'")
    if key.startswith(contract.RESERVED_PREFIX):
        raise SpecError(f"{where}: names starting with {contract.RESERVED_PREFIX} are set by the launcher; choose another name")
    if key in OWNED_ENV:
        raise SpecError(f"{where}: is set for every rank by torchrun or the launcher; a job cannot set it"
                        + (" (give the host's nic in the inventory)" if key.endswith("SOCKET_IFNAME") else ""))


def _secrets(top: Section) -> tuple[str, ...]:
    names = top.string_list("secrets", [])
    for i, name in enumerate(names):
        if not re.fullmatch(_ENV_NAME, name):
            raise top.expected(f"secrets[{i}]", "an environment variable name", name)
    clash = sorted(set(names) & set(top.get("env", {}) or {}))
    if clash:
        raise top.fail("secrets", f"'{clash[0]}' is also set in env; a secret's value comes only from the launcher's environment")
    return tuple(names)


def _image(sec: Section, folder: Path) -> ImageSpec:
    sec.check_keys(["base", "requirements"])
    requirements = sec.string("requirements", None)
    req_path = folder / requirements if requirements else None
    if req_path is not None and not req_path.is_file():
        raise sec.fail("requirements", f"'{requirements}' is not a file (resolved to {shown_path(req_path)})")
    return ImageSpec(base=sec.string("base", ImageSpec.base), requirements=req_path)


def _scaling(top: Section) -> tuple[int, ...]:
    value = top.get("scaling", [])
    if not isinstance(value, list):
        raise top.expected("scaling", "a list of node counts, e.g. [1, 2, 4]", value)
    counts = tuple(top.check_int(f"scaling[{i}]", n, minimum=1, maximum=MAX_NPROC_PER_NODE) for i, n in enumerate(value))
    if len(set(counts)) != len(counts):
        raise top.expected("scaling", "distinct node counts", value)
    return counts
