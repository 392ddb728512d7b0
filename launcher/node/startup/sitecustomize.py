"""Runs at the start of every Python process of a rank: step metrics for jobs that write none.

The rank wrapper (`launcher.node.rankexec`) puts this folder first on the command's PYTHONPATH, so
Python imports this file as `sitecustomize` before any of the job's code. It
1. runs the `sitecustomize` that Python would have found without this folder (Debian's python has
   one), so the interpreter is set up as it would be outside `launch`;
2. loads `launcher/node/contract.py` and `stepmetrics.py` by their paths, under private module
   names (the job's command may name another interpreter than the launcher's, without this
   package), and starts measuring steps (`stepmetrics.start`); torch is not imported here;
3. where a scheduler warns before its time limit (`LAUNCH_PREEMPT_SIGNAL`), keeps a warning that
   comes before the job has a handler of its own: the process is not ended by it, and
   `LAUNCH_PREEMPTED=1` is set in its environment for the job to find.
Nothing here may break the job: an error turns the measuring off, with one line on stderr.
"""

import os
import sys
# importlib.machinery, not importlib.util: this runs in every Python process of a rank, and
# importlib.util alone would cost it more than all the rest
from importlib.machinery import PathFinder, SourceFileLoader

HERE = os.path.dirname(os.path.abspath(__file__))
NODE = os.path.dirname(HERE)  # launcher/node


def _run_shadowed() -> None:
    """Run the next `sitecustomize` on sys.path after this folder, reporting its errors as site.py does."""
    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != HERE]
    spec = PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = _new_module("sitecustomize", spec.origin, spec.loader)
    module.__spec__ = spec
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - site.py's own words for a failing sitecustomize
        sys.stderr.write(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{err.__class__.__name__}: {err}\n")


def _load(name: str):
    """`launcher/node/<name>.py` as the module `_launch_<name>`."""
    path = os.path.join(NODE, f"{name}.py")
    loader = SourceFileLoader(f"_launch_{name}", path)
    module = _new_module(loader.name, path, loader)
    loader.exec_module(module)
    return module


def _new_module(name: str, path: str, loader):
    """An empty module, in sys.modules (for `sitecustomize`: what importing it gives from now on, as without us)."""
    module = type(sys)(name)
    module.__file__, module.__loader__ = path, loader
    sys.modules[name] = module
    return module


def _start_step_metrics() -> None:
    try:
        contract = _load("contract")
        directory = os.environ.get(contract.METRICS_DIR)
        if directory:
            rank = os.environ.get("RANK", "0")
            _load("stepmetrics").start(os.path.join(directory, contract.auto_metrics_file(rank)), contract.STEP_METRICS_PID)
    except Exception as exc:  # noqa: BLE001 - the job runs on, unmeasured
        sys.stderr.write(f"launch: step metrics off in this process: {type(exc).__name__}: {exc}\n")


def _hold_warning() -> None:
    name = os.environ.get("LAUNCH_PREEMPT_SIGNAL", "")
    if not name.startswith("SIG"):
        return
    import signal

    def warned(_signum, _frame) -> None:
        os.environ["LAUNCH_PREEMPTED"] = "1"  # contract.PREEMPTED

    if hasattr(signal, name):
        signal.signal(getattr(signal, name), warned)


_run_shadowed()
_start_step_metrics()
_hold_warning()
