"""Step metrics for jobs that write none: optimizer steps and DataLoader batches, measured inside the
rank's Python process.

`startup/sitecustomize.py` loads this file into every Python process of a rank and calls `start`.
Nothing happens until the job imports torch; then one global optimizer step post-hook and a wrapper
around DataLoader iteration turn what the job does into step records, appended to
`$LAUNCH_METRICS_DIR/rank$RANK.auto.jsonl` (`contract.auto_metrics_file`), one line per step,
written in bunches (every `FLUSH_EVERY_S` at most) and at exit:

    {"step": 0, "samples": 32, "step_time_s": 0.41}

- `samples`: the sizes of the batches fetched from DataLoaders while gradients were enabled since
  the previous step (a batch's size: the first dimension of its first tensor). An evaluation pass
  under `torch.no_grad()` adds nothing; gradient accumulation adds up its micro-batches. A step fed
  by no DataLoader (or by batches holding no tensor) has no `samples`: it is recorded, but counts
  no throughput (`launcher.results.stats` needs samples).
- `step_time_s`: from the first such fetch after the previous step (from the previous step's end
  when nothing was fetched) to the end of this step.
- One optimizer counts: the first that steps (a GAN's second optimizer would double the steps);
  once it has been garbage-collected, the next optimizer that steps takes over.

Standard library only, and no package-relative imports: the startup hook loads this file by its
path, so that it works whatever interpreter the job's command names. Any error turns the measuring
off for the rest of the process, with one line on stderr; the job itself never sees it.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import time
import weakref
from collections.abc import Callable, Mapping

TRIGGER = "torch"  # `import torch` imports torch.optim and torch.utils.data: hook once it is complete
SEARCH_DEPTH, SEARCH_WIDTH = 3, 8  # how far into nested batches to look for the first tensor
# A write is a system call, some 10 us of a training step's CPU even when the step is tiny: records
# are written in bunches, and a rank killed outright loses at most this many seconds of them.
FLUSH_EVERY_S = 0.5


def start(path: str, claim: str) -> "StepRecorder | None":
    """Record steps into the file `path` once the job has imported torch (it is not imported here),
    or right away when it has been (by a sitecustomize that the startup hook ran first).

    Only one process of a rank records: the first to import torch claims the rank by setting the
    environment variable `claim` to its PID, and the Python processes it starts later (a script's own
    `mp.spawn` children, spawned DataLoader workers) inherit the claim and record nothing.
    """
    claimed = os.environ.get(claim)
    if claimed and claimed != str(os.getpid()):
        return None
    recorder = StepRecorder(path, claim)

    def hook() -> None:
        recorder.guard(install, recorder)

    if TRIGGER in sys.modules:
        hook()
    else:
        sys.meta_path.insert(0, AfterImport(TRIGGER, hook, recorder.turn_off))
    atexit.register(recorder.guard, recorder.flush)
    return recorder


class StepRecorder:
    """Turns counted DataLoader fetches and optimizer steps into step records, appended to a file
    opened once: whole lines, every `FLUSH_EVERY_S` at most and at exit (`flush`)."""

    def __init__(self, path: str, claim: str = "", clock: Callable[[], float] = time.perf_counter) -> None:
        self.path = path
        self.claim = claim  # the environment variable naming the process that records (see `start`); "": none
        self.on = True
        self._clock = clock
        self._fd: int | None = None
        self._pid = os.getpid()
        self._pending: list[tuple[int, int | None, float]] = []  # (step, samples, seconds) not written yet
        self._flushed = clock()
        self._owner: weakref.ref | None = None  # the optimizer whose steps count
        self._step = 0
        self._samples: int | None = None  # since the last step; None: no batch size known
        self._window_start: float | None = None  # the first counted fetch since the last step
        self._last_end = clock()

    def fetched(self, started: float, samples: int | None) -> None:
        """A batch fetched (with gradients on) that began at `started`; `samples`: its size, if known."""
        if self._window_start is None:
            self._window_start = started
        if samples is not None:
            self._samples = samples + (self._samples or 0)

    def stepped(self, optimizer: object) -> None:
        """An optimizer finished a step: record the step if this optimizer is the one that counts."""
        ended = self._clock()
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            self._owner = weakref.ref(optimizer)
        elif owner is not optimizer:
            return
        began = self._window_start if self._window_start is not None else self._last_end
        self._pending.append((self._step, self._samples, ended - began))  # formatted when written: cheaper in bulk
        self._step += 1
        self._samples = self._window_start = None
        self._last_end = ended
        if ended - self._flushed >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Append the pending records to the file in one write. Only the process that recorded them
        writes them: a child forked from it holds copies."""
        if not self._pending or os.getpid() != self._pid:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, "".join(map(_record_line, self._pending)).encode())
        self._pending.clear()
        self._flushed = self._clock()

    def guard(self, function: Callable[..., object], *args: object) -> None:
        """Call `function(*args)` unless measuring is off; an error in it turns measuring off."""
        if self.on:
            try:
                function(*args)
            except Exception as exc:  # noqa: BLE001 - the job must never see an error of ours
                self.turn_off(exc)

    def turn_off(self, exc: BaseException) -> None:
        if not self.on:
            return
        self.on = False
        try:
            print(f"launch: step metrics off in this process: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - stderr may be gone
            pass


def _record_line(record: tuple[int, int | None, float]) -> str:
    step, samples, seconds = record
    counted = "" if samples is None else f', "samples": {samples}'
    return f'{{"step": {step}{counted}, "step_time_s": {seconds:.6g}}}\n'


def batch_size(batch: object, tensor_type: type, depth: int = SEARCH_DEPTH) -> int | None:
    """The first dimension of the first tensor in `batch`: a tensor, or tuples, lists and mappings
    holding one (looked for depth-first, a few levels and items deep); None when there is none."""
    if isinstance(batch, tensor_type):
        shape = batch.shape
        return shape[0] if shape else None
    if not depth:
        return None
    if isinstance(batch, (tuple, list)):
        items = batch
    elif isinstance(batch, Mapping):
        items = batch.values()
    else:
        return None
    for item in itertools.islice(items, SEARCH_WIDTH):
        size = batch_size(item, tensor_type, depth - 1)
        if size is not None:
            return size
    return None


def install(recorder: StepRecorder) -> Callable[[], None]:
    """Hook torch (imported in full by now): count the batches DataLoader iterators yield while
    gradients are enabled, and the steps of optimizers. Returns what takes the hooks out again."""
    import functools

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    fetch = _BaseDataLoaderIter.__next__
    grad_enabled, tensor_type, clock = torch.is_grad_enabled, torch.Tensor, time.perf_counter

    def count(started: float, batch: object) -> None:
        recorder.fetched(started, batch_size(batch, tensor_type))

    @functools.wraps(fetch)
    def counted_fetch(self):
        if not (recorder.on and grad_enabled()):
            return fetch(self)
        started = clock()
        batch = fetch(self)
        recorder.guard(count, started, batch)
        return batch

    def step_post_hook(optimizer, _args, _kwargs) -> None:
        recorder.guard(recorder.stepped, optimizer)

    if recorder.claim:
        os.environ[recorder.claim] = str(os.getpid())  # this process measures the rank (see `start`)
    handle = register_optimizer_step_post_hook(step_post_hook)
    _BaseDataLoaderIter.__next__ = counted_fetch

    def uninstall() -> None:
        handle.remove()
        _BaseDataLoaderIter.__next__ = fetch

    return uninstall


class NotSeen(Exception):
    """The watched module was imported, or is being imported, in a way `AfterImport` cannot see the end of."""


class AfterImport:
    """A `sys.meta_path` finder that loads nothing itself: it lets the finders behind it find module
    `name`, and runs `action()` once that module has been executed in full (not while it still
    imports its own submodules). It changes neither the spec nor the loader that were found: the
    import system gets a copy of the spec whose loader is a stand-in (`StandIn`) that runs the found
    loader, so that other import hooks that wrap, replace or refuse changes to either work as they
    would without it. Anything that keeps it from seeing the import (an error of its own or of a
    finder it asks, torch loaded past it) takes it out of `sys.meta_path` and reaches `failed(exc)`
    once; the import goes on as it would have without it."""

    def __init__(self, name: str, action: Callable[[], None], failed: Callable[[BaseException], None]) -> None:
        self.name, self.action, self.failed = name, action, failed
        self.done = False  # acted, or gave up
        self.running = 0  # found loaders of the module executing now: imports of its submodules are expected
        self._prefix = name + "."
        self._searching = False  # a finder behind it that searches sys.meta_path itself asks it again

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != self.name:  # every import until torch's comes here: keep this path short
            if not self.running and fullname.startswith(self._prefix):
                self.give_up(NotSeen(f"{self.name} was imported past launch's import hook (another hook loaded it)"))
            return None
        if self._searching or self.done:
            return None
        self._searching = True
        try:
            found = self._find_behind(fullname, path, target)
            return None if found is None else StandIn.watching(found, self)
        except Exception as exc:  # noqa: BLE001 - the import system asks the finders behind us itself, as without us
            self.give_up(exc)
            return None
        finally:
            self._searching = False

    def _find_behind(self, fullname: str, path: object, target: object) -> object:
        """The spec the finders behind this one find, as the import system would ask them; None when
        none finds one, or when one of the old kind (no `find_spec`) comes first: the import system
        then asks it itself, and this finder does not see the import."""
        finders = sys.meta_path
        behind = finders[finders.index(self) + 1:] if self in finders else ()
        for finder in behind:
            find = getattr(finder, "find_spec", None)
            if find is None:
                return None
            spec = find(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def attempt(self, function: Callable[..., object], *args: object) -> object:
        """`function(*args)`, or None when it raises (then giving up)."""
        try:
            return function(*args)
        except Exception as exc:  # noqa: BLE001 - the job must never see an error of ours
            self.give_up(exc)
            return None

    def executed(self) -> None:
        """The module has been executed in full: out of the import system, then the action, once."""
        if self.done:
            return
        self._leave()
        self.action()

    def give_up(self, exc: BaseException) -> None:
        if self.done:
            return
        self._leave()
        self.failed(exc)

    def _leave(self) -> None:
        self.done = True
        try:
            sys.meta_path.remove(self)
        except ValueError:  # taken out by someone else
            pass


class StandIn:
    """Stands in for the loader of a found spec of the watched module, in a copy of that spec
    (`watching`), and tells the finder once the found loader has executed the module. Any other
    attribute is the found loader's, so that `hasattr` answers as for the found loader."""

    # Its own attributes have names no loader uses: a hook in front of it may set or read the loader's.
    def __init__(self, found: object, finder: AfterImport) -> None:
        self._launch_found, self._launch_finder = found, finder
        self._launch_given = None  # the copy of `found` that holds this stand-in

    @staticmethod
    def watching(found: object, finder: AfterImport) -> object:
        """A copy of spec `found` with a stand-in for its loader; `found` itself for a loader that
        neither stand-in suits (no loader: a namespace package; one the import would refuse)."""
        loader = found.loader
        if loader is None:
            return found
        if hasattr(loader, "exec_module"):
            if not hasattr(loader, "create_module"):  # the import fails, as it would without us
                return found
            stand_in = ExecStandIn(found, finder)
        elif hasattr(loader, "load_module"):
            stand_in = LegacyStandIn(found, finder)
        else:
            return found
        import copy  # only once torch is found: not every Python process pays for it

        stand_in._launch_given = given = copy.copy(found)
        given.loader = stand_in
        return given

    def __getattr__(self, name: str) -> object:
        found = self.__dict__.get("_launch_found")  # absent while a copy of this object is being made
        if found is None:
            raise AttributeError(name)
        return getattr(found.loader, name)

    def __repr__(self) -> str:
        return repr(self._launch_found.loader)


class ExecStandIn(StandIn):
    """For a loader with `create_module` and `exec_module`: the module is made and executed by the
    found loader, and as made from the found spec (it gets the found spec and loader)."""

    def create_module(self, spec: object) -> object:
        found = self._launch_found
        return found.loader.create_module(found if spec is self._launch_given else spec)

    def exec_module(self, module: object) -> None:
        finder = self._launch_finder
        finished = finder.attempt(self._as_found, module)
        finder.running += 1
        try:
            self._launch_found.loader.exec_module(module)
        finally:
            finder.running -= 1
            if finished is not None:
                finished()  # cannot fail: sets an attribute that `_as_found` set
        finder.attempt(finder.executed)

    def _as_found(self, module: object) -> Callable[[], None] | None:
        """Give `module`, made from the copy of the spec, the found spec and loader, as without us;
        the found spec takes over the import system's mark that the module is initializing (which
        it sets on the copy, and reads from `module.__spec__`). Returns what ends that mark."""
        given, found = self._launch_given, self._launch_found
        if getattr(module, "__spec__", None) is not given:  # made from another spec: as it is
            return None
        found._initializing = getattr(given, "_initializing", False)
        module.__spec__ = found
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = found.loader
        return lambda: setattr(found, "_initializing", False)


class LegacyStandIn(StandIn):
    """For a loader that has `load_module` and no `exec_module` (the import system then calls
    `load_module`, and fills in the module's loader and spec only where it has none)."""

    def load_module(self, fullname: str) -> object:
        finder = self._launch_finder
        finder.running += 1
        try:
            module = self._launch_found.loader.load_module(fullname)
        finally:
            finder.running -= 1
        finder.attempt(self._fill_in, sys.modules.get(fullname, module))
        finder.attempt(finder.executed)
        return module

    def _fill_in(self, module: object) -> None:
        """The loader and spec the import system gives a module that has none: the found ones, as without us."""
        found = self._launch_found
        if getattr(module, "__loader__", None) is None:
            module.__loader__ = found.loader
        if getattr(module, "__spec__", None) is None:
            module.__spec__ = found
