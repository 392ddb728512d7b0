"""The step-metrics hook beside other import hooks: a job runs exactly as without launch's hook,
whatever else hooks the import of torch (a user's own sitecustomize, or a module the script imports
first), and is measured wherever the hook can still see torch's import end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import launch, run_id_of
from launcher.node import contract
from launcher.node.rankexec import STARTUP_DIR
from test_auto_metrics import local_job

OFF_LINE = "launch: step metrics off in this process: "

# Each pattern is a user's module that hooks the import of torch and says so once torch is imported.
PATTERNS = {
    # a CPU shim: wraps exec_module of the loader it finds for torch, patches torch, then deletes its wrapper
    "wraps_exec_module": """\
import sys


class ShimFinder:
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if finder is not self and find else None
            if spec is not None:
                break
        else:
            return None
        loader, original = spec.loader, spec.loader.exec_module

        def exec_module(module):
            try:
                original(module)
            finally:
                del loader.exec_module
            module.cuda.is_available = lambda: False
            print("shim: torch patched")

        loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, ShimFinder())
""",
    # a profiler: a finder that returns a new spec with a loader of its own around the one it finds
    "own_loader": """\
import importlib.abc
import importlib.machinery
import sys


class TimingLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        print(f"profiler: {module.__name__} imported")


class TimingFinder:
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        index = sys.meta_path.index(self)
        for finder in sys.meta_path[:index] + sys.meta_path[index + 1:]:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        mine = importlib.machinery.ModuleSpec(name, TimingLoader(spec.loader), origin=spec.origin, is_package=True)
        mine.submodule_search_locations = spec.submodule_search_locations
        mine.has_location = spec.has_location
        return mine


sys.meta_path.insert(0, TimingFinder())
""",
    # an old-style loader: load_module only, with __slots__, and no attribute may be set on it
    "legacy_loader": """\
import importlib.util
import sys


class OldLoader:
    __slots__ = ("spec",)

    def __init__(self, spec):
        object.__setattr__(self, "spec", spec)

    def __setattr__(self, name, value):
        raise AttributeError(f"OldLoader is read-only: {name}")

    def load_module(self, name):
        module = importlib.util.module_from_spec(self.spec)
        sys.modules[name] = module
        self.spec.loader.exec_module(module)
        print(f"old loader: {name} loaded")
        return sys.modules[name]


class OldFinder:
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if finder is not self and hasattr(finder, "find_spec") else None
            if spec is not None:
                return importlib.util.spec_from_loader(name, OldLoader(spec), origin=spec.origin, is_package=True)
        return None


sys.meta_path.insert(0, OldFinder())
""",
    # a finder that asks the path finder itself, not sys.meta_path: in front of launch's, it goes past it
    "bypass": """\
import importlib.machinery
import sys


class PathOnly:
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        print("bypass: torch found")
        return importlib.machinery.PathFinder.find_spec(name, path, target)


sys.meta_path.insert(0, PathOnly())
""",
}

# trains 3 steps of 4 samples; says which loader torch has, as a check that it is what it is without launch
TRAIN = """\
import sys
{prelude}
import torch
from torch.utils.data import DataLoader

torch.manual_seed(0)
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step, (x, y) in enumerate(DataLoader(list(zip(torch.ones(12, 2), torch.zeros(12, 1))), batch_size=4)):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    print(f"step {{step}} loss {{loss.item():.4f}}")
print("torch's loader:", type(torch.__spec__.loader).__name__, torch.__loader__ is torch.__spec__.loader)
print("cuda:", torch.cuda.is_available())
print("done", file=sys.stderr)
"""

MARKERS = {"wraps_exec_module": "shim: torch patched", "own_loader": "profiler: torch imported",
           "legacy_loader": "old loader: torch loaded", "bypass": "bypass: torch found"}


def user_setup(tmp_path: Path, pattern: str, place: str) -> tuple[Path, Path]:
    """The user's folder (for PYTHONPATH) holding `pattern` as their sitecustomize, or as a module
    the script imports first (`place` "script": its finder then comes in front of launch's); and the script."""
    user = tmp_path / "user"
    user.mkdir()
    if place == "sitecustomize":
        (user / "sitecustomize.py").write_text(PATTERNS[pattern])
        prelude = ""
    else:
        (user / "user_hook.py").write_text(PATTERNS[pattern])
        prelude = "import user_hook"
    script = tmp_path / "train.py"
    script.write_text(TRAIN.format(prelude=prelude))
    return user, script


def run_both(script: Path, user: Path, metrics: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The script run as under bare torchrun, and as a rank of launch runs it (launch's startup
    folder first on PYTHONPATH), side by side; each with its stderr merged into its stdout."""
    base = {k: v for k, v in os.environ.items() if k not in (contract.STEP_METRICS_PID, contract.METRICS_DIR)}
    base.update(PYTHONPATH=str(user), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", RANK="0")
    hooked = dict(base, PYTHONPATH=f"{STARTUP_DIR}{os.pathsep}{user}", **{contract.METRICS_DIR: str(metrics)})
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=script.parent, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for env in (base, hooked)]
    done = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return done[0], done[1]


def records(metrics: Path) -> list[tuple[int, int]]:
    path = metrics / contract.auto_metrics_file(0)
    lines = path.read_text().splitlines() if path.exists() else []
    return [(r["step"], r["samples"]) for r in map(json.loads, lines)]


MEASURED = [(0, 4), (1, 4), (2, 4)]


@pytest.mark.parametrize("place", ["sitecustomize", "script"])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_a_job_runs_as_without_launch_beside_other_import_hooks(tmp_path: Path, pattern: str, place: str) -> None:
    user, script = user_setup(tmp_path, pattern, place)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    bare, hooked = run_both(script, user, metrics)
    assert bare.returncode == 0 and MARKERS[pattern] in bare.stdout and "step 2 loss" in bare.stdout, bare.stdout
    assert hooked.returncode == 0, hooked.stdout
    if (pattern, place) == ("bypass", "script"):
        # torch is loaded by a finder in front of launch's that never asks it: measuring is off, said once
        (off,) = [line for line in hooked.stdout.splitlines() if line.startswith(OFF_LINE)]
        assert "torch was imported past launch's import hook" in off
        assert hooked.stdout.replace(off + "\n", "") == bare.stdout
        assert records(metrics) == []
    else:
        assert hooked.stdout == bare.stdout
        assert records(metrics) == MEASURED


def test_torch_imported_by_the_users_sitecustomize_is_measured(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import torch\ntorch.set_num_threads(1)\n")
    script = tmp_path / "train.py"
    script.write_text(TRAIN.format(prelude=""))
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    bare, hooked = run_both(script, user, metrics)
    assert bare.returncode == 0 and "step 2 loss" in bare.stdout, bare.stdout
    assert (hooked.returncode, hooked.stdout) == (0, bare.stdout)
    assert records(metrics) == MEASURED


@pytest.mark.integration
def test_a_rank_with_a_shim_wrapping_torchs_loader_runs_and_is_measured(tmp_path: Path) -> None:
    """The reported case, end to end: `launch --local` of a script whose user's sitecustomize wraps torch's loader."""
    user, script = user_setup(tmp_path, "wraps_exec_module", "sitecustomize")
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(user), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    assert plain.returncode == 0, plain.stderr
    job = local_job(tmp_path, script, [], nproc=1)
    job.write_text(job.read_text().replace("env: {OMP_NUM_THREADS: '1'}", f"env: {{OMP_NUM_THREADS: '1', PYTHONPATH: '{user}'}}"))
    assert str(user) in job.read_text(), "the job's env names the user's folder"
    result = launch(str(job), "--local", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run = tmp_path / "runs" / run_id_of(result.stdout)
    assert (run / "logs/local/rank0.log").read_text() == plain.stdout + plain.stderr
    assert records(run / "metrics") == MEASURED
