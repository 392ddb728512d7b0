"""cluster.yaml's `slurm:` block: a Slurm cluster whose scheduler picks the nodes of each run, reached
through its login side (this machine, or a host over SSH), with a folder every node sees.

The nodes of a run are not known until the scheduler starts it: `slurm_nodes` gives the run's node
slots, each with an address placeholder (`{node0}`, `{node1}`, ...) that the Slurm backend replaces
with the node's address once the job runs.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from .cluster import LOCAL_ADDRESS, MAX_GPUS, MAX_NPROC_PER_NODE, Host, SshSettings, _address, _nic, _python
from .fields import Section
from .yamlfile import describe

CONTAINERS = ["docker", "apptainer", "pyxis"]
SLURM_KEYS = ["login", "shared_dir", "partition", "account", "cpus_per_node", "gpus_per_node", "nic", "python",
              "container", "sbatch_args"]
NODE_ADDRESS = "{launch.node%d}"  # node k's address, which its batch script fills in (launcher/plan/slurm.py)
_SLURM_NAME = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
# in shared_dir: Slurm's file name patterns read % and \, container mounts split at : and ,; blanks and
# quotes would need quoting in #SBATCH lines
_PATH_REFUSED = re.compile(r"[\x00-\x20\x7f%\\:,'\"$`]")

# sbatch options the launcher sets itself, and from what
_SET_BY_LAUNCHER = {
    "--nodes": "from job.yaml's nodes (or --nodes)",
    "--ntasks-per-node": "itself: one task per node, which starts job.yaml's nproc_per_node processes",
    "--ntasks": "itself: one task per node, which starts job.yaml's nproc_per_node processes",
    "--output": "itself: the job's output goes to its run directory",
    "--error": "itself: the job's output goes to its run directory",
    "--signal": "itself, to stop the run cleanly",
    "--time": "from job.yaml's timeout",
    "--job-name": "from job.yaml's name",
    "--parsable": "itself, to read the job id",
    "--chdir": "itself: the run's folder under shared_dir",
    "--requeue": "from job.yaml's max_restarts",
    "--no-requeue": "from job.yaml's max_restarts",
    "--gpus-per-node": "from slurm.gpus_per_node",
    "--wrap": "itself: it submits its own batch script",
    "--array": "itself: one job per run",
}
_SHORT = {"N": "--nodes", "n": "--ntasks", "o": "--output", "e": "--error", "t": "--time", "J": "--job-name",
          "D": "--chdir", "a": "--array"}
# sbatch's short options that take no value (-H, -v, ...), so `-vN2` still sets -N; -I and -k take an
# optional value, which must then be glued on
_SHORT_FLAGS = set("hHOQsuvVW")
_SHORT_OPTIONAL = set("Ik")
_REAL_PREFIXES = {"--gpus"}  # real sbatch options that are also the start of one of the above


@dataclass(frozen=True)
class SlurmSpec:
    login: str  # "local" or a host name / ~/.ssh/config alias, where sbatch, squeue, scontrol and scancel run
    shared_dir: str  # absolute, normalised: the same folder on the login side and every node
    partition: str | None = None
    account: str | None = None
    cpus_per_node: int | None = None
    gpus_per_node: int = 0
    nic: str | None = None
    python: str | None = None  # interpreter for runtime: host on the nodes (None: python3)
    container: str = "docker"
    sbatch_args: tuple[str, ...] = ()
    login_host: Host | None = None  # how to reach the login side over SSH; None when it is this machine

    @property
    def is_local(self) -> bool:
        return self.login == LOCAL_ADDRESS


def load_slurm(sec: Section, ssh_defaults: SshSettings) -> SlurmSpec:
    """The `slurm:` block of an inventory, checked; `ssh_defaults` (its `ssh:` block) reach the login host."""
    sec.check_keys(SLURM_KEYS, required=["login", "shared_dir"])
    login = _address(sec, "login")
    name_what = "a name of letters, digits, '_', '.' or '-'"
    return SlurmSpec(
        login=login,
        shared_dir=_shared_dir(sec),
        partition=sec.string("partition", None, pattern=_SLURM_NAME, what=name_what),
        account=sec.string("account", None, pattern=_SLURM_NAME, what=name_what),
        cpus_per_node=sec.integer("cpus_per_node", None, minimum=1, maximum=MAX_NPROC_PER_NODE),
        gpus_per_node=sec.integer("gpus_per_node", 0, minimum=0, maximum=MAX_GPUS),
        nic=_nic(sec),
        python=_python(sec),
        container=sec.choice("container", CONTAINERS, "docker"),
        sbatch_args=_sbatch_args(sec),
        login_host=None if login == LOCAL_ADDRESS else Host(name="login", address=login, ssh=ssh_defaults),
    )


def slurm_nodes(slurm: SlurmSpec, count: int) -> tuple[Host, ...]:
    """The node slots of a run of `count` nodes; their addresses are placeholders until the job runs."""
    return tuple(
        Host(name=f"node{k}", address=NODE_ADDRESS % k, gpus=slurm.gpus_per_node, slots=slurm.cpus_per_node,
             nic=slurm.nic, python=slurm.python)
        for k in range(count)
    )


def _shared_dir(sec: Section) -> str:
    what = "an absolute path that the login side and every node see, such as /shared/me/launch"
    value = sec.string("shared_dir", what=what)
    if not value.startswith("/") or "/../" in f"{value}/" or value.strip("/") == "":
        raise sec.expected("shared_dir", what, value)
    bad = _PATH_REFUSED.search(value)
    if bad:
        raise sec.fail("shared_dir", f"{describe(value)} holds {describe(bad.group())}; choose a path without blanks, "
                       "control characters or any of % \\ : , ' \" $ ` (Slurm's file name patterns and container mounts "
                       "read them)")
    return posixpath.normpath(re.sub(r"/+", "/", value))


def _sbatch_args(sec: Section) -> tuple[str, ...]:
    """Extra sbatch options, one per item with its value attached (`--qos=normal`, `-qnormal`): each goes
    on sbatch's command line or an #SBATCH line as it is. None of the options the launcher sets itself."""
    value = sec.get("sbatch_args", [])
    if not isinstance(value, list):
        raise sec.expected("sbatch_args", "a list of sbatch options, e.g. [--qos=normal]", value)
    attached = "an sbatch option with its value attached, such as --qos=normal or -qnormal"
    for i, raw in enumerate(value):
        key = f"sbatch_args[{i}]"
        if not isinstance(raw, str):
            raise sec.expected(key, 'a string (quote it, e.g. "--qos=normal")', raw)
        if re.search(r"[\x00-\x1f\x7f]", raw):
            raise sec.expected(key, "an sbatch option without control characters or line breaks", raw)
        if not raw.startswith("-"):
            before = value[i - 1] if i else None
            if isinstance(before, str) and re.fullmatch(r"--[A-Za-z0-9-]+|-[A-Za-z]", before):
                joined = f"{before}={raw}" if before.startswith("--") else f"{before}{raw}"
                raise sec.fail(key, f"'{raw}' is not an option; give an option and its value as one item: '{joined}'")
            raise sec.expected(key, "an sbatch option starting with '-', such as --qos=normal", raw)
        option = _launcher_option(raw)
        if option:
            short = next((f"-{letter}/" for letter, long in _SHORT.items() if long == option), "")
            raise sec.fail(key, f"'{raw}' is {short}{option}, which the launcher sets {_SET_BY_LAUNCHER[option]}; "
                           "leave it out of sbatch_args")
        if raw.startswith("--"):
            if not re.fullmatch(r"--[A-Za-z0-9][A-Za-z0-9_-]*(=.*)?", raw, re.DOTALL):
                raise sec.expected(key, attached, raw)
        elif not re.match(r"-[A-Za-z]", raw) or re.match(r"-[A-Za-z]+\s", raw):
            raise sec.expected(key, attached, raw)
    return tuple(value)


def _launcher_option(item: str) -> str | None:
    """The launcher-set option (long form) that `item` gives, if any: `--nodes=3`, `--nodes 3`, `-N3`,
    `-N 3`, `-vN3`, or an abbreviation sbatch would take for one (`--time` as `--tim=5`)."""
    if item.startswith("--"):
        name = re.split(r"[=\s]", item, maxsplit=1)[0]
        if name in _SET_BY_LAUNCHER:
            return name
        if name not in _REAL_PREFIXES and len(name) > 3:
            started = [option for option in _SET_BY_LAUNCHER if option.startswith(name)]
            if started:
                return started[0]
        return None
    for letter in item[1:]:  # a cluster of short options: flags, then one with its value
        if letter in _SHORT:
            return _SHORT[letter]
        if letter in _SHORT_OPTIONAL or letter not in _SHORT_FLAGS:
            return None  # the rest of the item is this option's value
    return None
