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
    """Record steps into the file `path` once the job has imported torch (it is not imported here).

    Only one process of a rank records: the first to import torch claims the rank by setting the
    environment variable `claim` to its PID, and the Python processes it starts later (a script's own
    `mp.spawn` children, spawned DataLoader workers) inherit the claim and record nothing.
    """
    claimed = os.environ.get(claim)
    if claimed and claimed != str(os.getpid()):
        return None
    recorder = StepRecorder(path, claim)
    sys.meta_path.insert(0, AfterImport(TRIGGER, lambda: recorder.guard(install, recorder), recorder.turn_off))
    atexit.register(recorder.guard, recorder.flush)
    return recorder


class StepRecorder:
    """Turns counted DataLoader fetches and optimizer steps into step records, appended to a file
    opened once: whole lines, every `FLUSH_EVERY_S` at most and at exit (`flush`)."""

    def __init__(self, path: str, claim: str = "", clock: Callable[[], float] = time.perf_counter) -> None:
        self.path = path
        self.claim = claim  # the environment variable naming the process that records (see `start`)
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

    os.environ[recorder.claim] = str(os.getpid())  # this process measures the rank (see `start`)
    handle = register_optimizer_step_post_hook(step_post_hook)
    _BaseDataLoaderIter.__next__ = counted_fetch

    def uninstall() -> None:
        handle.remove()
        _BaseDataLoaderIter.__next__ = fetch

    return uninstall


class AfterImport:
    """A `sys.meta_path` finder that loads nothing itself: it lets the other finders find module
    `name`, and runs `action()` once that module has been executed in full (not while it still
    imports its own submodules). `failed(exc)` hears of an error of its own; the import goes on."""

    def __init__(self, name: str, action: Callable[[], None], failed: Callable[[BaseException], None]) -> None:
        self.name, self.action, self.failed = name, action, failed

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the search below must not come back here
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        try:
            self._run_after(spec.loader)
        except Exception as exc:  # noqa: BLE001 - an odd loader: the import goes on, unmeasured
            self.failed(exc)
        return spec

    def _run_after(self, loader: object) -> None:
        """Make `loader` run the action after executing the module, then give it back its own method."""
        execute = loader.exec_module

        def execute_then_act(module: object) -> None:
            if module.__name__ != self.name:  # a loader shared by several modules
                return execute(module)
            try:
                execute(module)
            finally:
                del loader.exec_module
            self.action()

        loader.exec_module = execute_then_act
