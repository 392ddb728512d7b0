"""Pure planning: (job, hosts, run id, options) -> what runs on every node, exactly.

Nothing here touches the disk, the network or the clock; `--dry-run` prints a plan and
tests compare plans with golden files. `model`: the plan's data and JSON; `make`: the plan made;
per node, `layout` (its folders), `command` (supervisor, torchrun, rank wrapper), `env`,
`container` and `hostproc` (how a lab host starts it); `ports`: which ports a run listens on.
"""

from .command import SUPERVISOR_MODULE
from .container import RUN_LABEL
from .hostproc import DETACHED_OUTPUT, OWN_GROUP, REMOTE_LIB
from .layout import run_state_dir, workdir_copies
from .make import check_hosts, make_plan
from .model import STOP_GRACE_S, LaunchPlan, NodeKind, NodePlan, PlanOptions
from .ports import rdzv_port

__all__ = [
    "DETACHED_OUTPUT", "OWN_GROUP", "REMOTE_LIB", "RUN_LABEL", "STOP_GRACE_S", "SUPERVISOR_MODULE", "LaunchPlan", "NodeKind",
    "NodePlan", "PlanOptions", "check_hosts", "make_plan", "rdzv_port", "run_state_dir", "workdir_copies",
]
