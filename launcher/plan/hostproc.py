"""A node that is a lab host's own python (runtime: host): a process group of its own, its id in a
file, started in the node's run directory (README: "Multi-host runs", the end)."""

from __future__ import annotations

from ..spec import Host
from .layout import NodeLayout
from .model import PlanOptions

REMOTE_LIB = "lib"  # runtime: host: what ships with the ranks (`launcher.node`), in the node's run directory
DETACHED_OUTPUT = "supervisor.log"  # a detached node's own stdout and stderr (its run's lines are in NODE_OUTPUT)
# runtime: host on a lab host: a process group of its own (setsid), its id in a file (its leader's start
# time, /proc/PID/stat's 22nd field, in that file's name + ".start") so that the launcher can stop it,
# started in the node's run directory (its supervisor enters the run's working directory), with the
# inventory's python first on PATH (as for local runs). $0: pid file, $1: directory, $2: that python's
# folder (may be empty), $3: a file for its output when it runs detached (empty: the SSH channel).
HOST_WRAPPER = (
    'echo $$ > "$0" && sed "s/.*) //" /proc/$$/stat | cut -d" " -f20 > "$0.start" && cd "$1" && '
    '{ [ -z "$2" ] || export PATH="$2:$PATH"; } && '
    '{ [ -z "$3" ] || exec >"$3" 2>&1 </dev/null; } && shift 3 && exec "$@"'
)


# Shell, $0 the pid file: `pg` set to the node's process group, or exit 1 when there is none (no file,
# or its number now another process's: the same number, a different start time; a pid file without a
# start time, from an earlier launcher, is taken as it is). A group whose leader has gone but whose
# processes live on is still the node's: Linux gives no number out while a group holds it.
OWN_GROUP = (
    'pg=$(cat "$0" 2>/dev/null) || exit 1; start=$(cat "$0.start" 2>/dev/null); '
    'now=$(sed "s/.*) //" "/proc/$pg/stat" 2>/dev/null | cut -d" " -f20); '
    '[ -z "$now" ] || [ -z "$start" ] || [ "$now" = "$start" ] || exit 1; '
)


def pid_file(host: Host, where: NodeLayout) -> str:
    """Where the node's process group id is kept, for `launch stop` and the end of the run."""
    return f"{where.node_dir}/{host.name}.pid"


def host_process(where: NodeLayout, pid_path: str, env: dict[str, str], options: PlanOptions) -> list[str]:
    """What comes before the node's command: its own process group (attached: waited for; detached:
    in the background, its output in DETACHED_OUTPUT), HOST_WRAPPER, and `env` setting the ranks'
    variables."""
    bindir = where.python.rsplit("/", 1)[0] if where.python.startswith("/") else ""
    output = f"{where.log_dir}/{DETACHED_OUTPUT}" if options.detach else ""
    argv = ["setsid", "-f" if options.detach else "--wait", "sh", "-c", HOST_WRAPPER, pid_path, where.node_dir, bindir, output, "env"]
    return argv + [f"{key}={value}" for key, value in sorted(env.items())]
