"""`launch check` of a Slurm inventory: whether a run can be submitted and can start there, one line
per thing checked: Slurm's commands, the partition and its nodes, the shared folder (from the login
side and from a node), and on a node what the job's runtime needs (Docker, or the python with torch).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ..errors import RunError
from ..spec import SlurmSpec
from .slurmctl import SlurmCtl

NODE_TIMEOUT_S = 120  # the one-node srun waits for a node at most this long
_PROBE_TORCH = "import torch; print(torch.__version__)"


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"slurm: {self.what}: {'ok' if self.ok else 'NOT READY'}: {self.detail}"


def check_slurm(slurm: SlurmSpec, runtime: str | None = None, ctl: SlurmCtl | None = None) -> list[Check]:
    """Every check of the inventory's cluster, in order; a later one is skipped (and fails) when an
    earlier one it needs failed. `runtime`: the job's, where a job is checked (else both are tried)."""
    ctl = ctl or SlurmCtl(slurm)
    try:
        return _checks(slurm, runtime, ctl)
    finally:
        ctl.close()


def _checks(slurm: SlurmSpec, runtime: str | None, ctl: SlurmCtl) -> list[Check]:
    found = [_commands(ctl)]
    if not found[0].ok:
        return found
    partition = _partition(slurm, ctl)
    found.append(partition)
    found.append(_writable_here(slurm, ctl))
    if partition.ok and found[-1].ok:
        found += _on_a_node(slurm, runtime, ctl)
    return found


def _commands(ctl: SlurmCtl) -> Check:
    missing = []
    for command in ("sbatch", "squeue", "scontrol", "scancel", "srun"):
        try:
            code, _ = ctl.run([command, "--version"], timeout=30)
        except RunError as exc:
            return Check("commands", False, f"on {ctl.where}: {exc}")
        if code != 0:
            missing.append(command)
    if missing:
        return Check("commands", False, f"on {ctl.where}: {', '.join(missing)} did not answer (are Slurm's clients installed?)")
    try:
        code, out = ctl.run(["sinfo", "-h", "-o", "%P"], timeout=30)
    except RunError as exc:
        code, out = 1, str(exc)
    if code != 0:
        return Check("commands", False, f"on {ctl.where}: sinfo cannot reach the controller: {out.strip()[-200:]}")
    return Check("commands", True, f"sbatch, squeue, scontrol, scancel, srun and sinfo answer on {ctl.where}")


def _partition(slurm: SlurmSpec, ctl: SlurmCtl) -> Check:
    try:
        partitions = ctl.partitions()
        name = slurm.partition or ctl.default_partition()
    except RunError as exc:
        return Check("partition", False, str(exc))
    if name is None:
        return Check("partition", False, "the inventory names none and the cluster has no default partition")
    if name not in partitions:
        return Check(f"partition {name}", False, f"not on this cluster (it has: {', '.join(sorted(partitions)) or 'none'})")
    idle, total = partitions[name]
    if total == 0:
        return Check(f"partition {name}", False, "has no nodes")
    return Check(f"partition {name}", True, f"{idle} of {total} node(s) idle")


def _writable_here(slurm: SlurmSpec, ctl: SlurmCtl) -> Check:
    probe = f"{slurm.shared_dir}/.launch-check-{secrets.token_hex(4)}"
    code, out = ctl.run(["sh", "-c", 'mkdir -p "$1" && touch "$0" && rm -f "$0"', probe, slurm.shared_dir], timeout=30)
    if code != 0:
        return Check("shared_dir", False, f"{slurm.shared_dir} is not writable on {ctl.where}: {out.strip()[-200:]}")
    return Check("shared_dir", True, f"{slurm.shared_dir} is writable on {ctl.where}")


def _on_a_node(slurm: SlurmSpec, runtime: str | None, ctl: SlurmCtl) -> list[Check]:
    """One one-node srun: the shared folder from there, and Docker and/or the python with torch."""
    probe = f"{slurm.shared_dir}/.launch-check-{secrets.token_hex(4)}"
    python = slurm.python or "python3"
    script = ('echo "node=$(hostname)"; if touch "$0" && [ -e "$0" ]; then rm -f "$0"; echo shared=ok; else echo shared=no; fi; '
              'echo "docker=$(docker version --format "{{.Server.Version}}" 2>/dev/null || echo no)"; '
              'echo "torch=$("$1" -c "$2" 2>/dev/null || echo no)"')
    srun = ["srun", "--nodes=1", "--ntasks=1", "--time=2", "--job-name=launch-check", f"--immediate={NODE_TIMEOUT_S}"]
    srun += [f"--partition={slurm.partition}"] if slurm.partition else []
    srun += [f"--account={slurm.account}"] if slurm.account else []
    try:
        code, out = ctl.run([*srun, "sh", "-c", script, probe, python, _PROBE_TORCH], timeout=NODE_TIMEOUT_S + 60)
    except RunError as exc:
        code, out = 1, str(exc)
    answers = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and line.split("=", 1)[0].isalpha())
    node = answers.get("node")
    if code != 0 or node is None:
        return [Check("a node", False, f"a one-node srun did not run: {out.strip()[-300:]}")]
    found = [Check("shared_dir on a node", answers.get("shared") == "ok",
                   f"{slurm.shared_dir} is {'writable' if answers.get('shared') == 'ok' else 'not writable'} on {node}")]
    if runtime in (None, "docker") and slurm.container == "docker":
        version = answers.get("docker", "no")
        found.append(Check("docker on a node", version != "no",
                           f"{node}: Docker engine {version}" if version != "no" else f"{node}: no Docker engine answers"))
    if runtime in (None, "host"):
        torch = answers.get("torch", "no")
        found.append(Check("python on a node", torch != "no" or runtime is None,
                           f"{node}: {python} has torch {torch}" if torch != "no" else f"{node}: {python} cannot import torch"
                           + (" (needed for runtime: host)" if runtime is None else "")))
    return found
