"""The training techniques of "Accelerate Model Training with PyTorch 2.X", shared by the example jobs.

A job script (`resnet18_cifar10.py`, `transformer_lm.py`) says what its model, data and loss are;
this module does the rest, each acceleration behind a flag that is off by default:

- distributed data parallel training: gloo on CPU, NCCL on GPUs (`LAUNCH_BACKEND`, else by device);
- `--amp`: autocast, bfloat16 on CPU, float16 with a gradient scaler on CUDA;
- `--channels-last` (image models): model and inputs in channels-last memory format;
- `--compile`: `torch.compile` of the DDP model; the log says how long the first (compiling) step took;
- `--accum-steps N`: gradients accumulated over N micro-batches, with DDP's `no_sync` on all but the
  last and each micro-batch's loss divided by N, so N micro-batches of B give the gradient of one
  batch of N x B;
- `--workers N`: DataLoader worker processes, persistent, with pinned memory on CUDA;
- checkpoints: every `--checkpoint-every` optimizer steps and at each epoch's end, local rank 0 of each
  host writes model, optimizer, scaler, epoch and position in the epoch atomically into
  `--checkpoint-dir` when given, else `LAUNCH_CHECKPOINT_DIR`, else `checkpoints`; a run starts from the
  latest one it finds there;
- a scheduler's warning (`LAUNCH_PREEMPT_SIGNAL`: its time limit or a preemption is near): every rank
  agrees on it at the next step, the run saves a checkpoint and ends, and the next run resumes from it.

The learning rate follows the linear scaling rule: `--lr` is the rate for a global batch of 256
samples, and the run uses lr x (batch x world size x accum steps) / 256, so that the same job at more
ranks, or with accumulation, trains with the step size its effective batch calls for.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from launcher.node.metrics import MetricsWriter

REFERENCE_BATCH = 256
CHECKPOINTS_KEPT = 2


def add_arguments(parser: argparse.ArgumentParser, *, batch_size: int, lr: float, image_model: bool) -> None:
    """The flags every example job shares."""
    add = parser.add_argument
    add("--epochs", type=int, default=1)
    add("--batch-size", type=int, default=batch_size, help="per rank, per micro-batch")
    add("--lr", type=float, default=lr, help=f"learning rate for a global batch of {REFERENCE_BATCH} (scaled linearly)")
    add("--max-steps", type=int, default=0, help="stop after this many optimizer steps in all (0: run every epoch)")
    add("--seed", type=int, default=0)
    add("--amp", action="store_true", help="mixed precision: bfloat16 on CPU, float16 + gradient scaler on CUDA")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    add("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    add("--checkpoint-every", type=int, default=0, help="optimizer steps between checkpoints (0: at epoch ends only)")
    add("--checkpoint-dir", default=None, help="where checkpoints go (default: LAUNCH_CHECKPOINT_DIR under launch, else checkpoints)")
    add("--log-every", type=int, default=20, help="optimizer steps between progress lines")
    if image_model:
        add("--channels-last", action="store_true", help="model and inputs in channels-last memory format")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "accum_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    for name in ("max_steps", "workers", "checkpoint_every", "log_every"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(args, name)}")


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.main:
            print(message, flush=True)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over every rank."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def minimum(self, value: float) -> float:
        """The smallest of every rank's `value`."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor.item()


def init_distributed() -> Distributed:
    """Join the process group torchrun describes (a single process without torchrun)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = os.environ.get("LAUNCH_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, after the samples a checkpoint had seen."""

    def __init__(self, data: Dataset, ctx: Distributed, shuffle: bool, seed: int) -> None:
        super().__init__(data, num_replicas=ctx.world, rank=ctx.rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def loader(data: Dataset, sampler: torch.utils.data.Sampler, batch_size: int, workers: int, device: torch.device,
           drop_last: bool = True) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=drop_last)


class EvalSampler(torch.utils.data.Sampler):
    """Every rank's share of a held-out set, each item exactly once (no padding, unlike DistributedSampler)."""

    def __init__(self, size: int, ctx: Distributed) -> None:
        self.indices = range(ctx.rank, size, ctx.world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Checkpoints:
    """`ckpt-<step>.pt` files in one directory, written atomically; the last few are kept."""

    def __init__(self, directory: str | os.PathLike[str], writer: bool) -> None:
        self.directory = Path(directory)
        self.writer = writer

    def paths(self) -> list[Path]:
        found = []
        for path in self.directory.glob("ckpt-*.pt"):
            try:
                found.append((int(path.stem.split("-", 1)[1]), path))
            except ValueError:
                continue
        return [path for _, path in sorted(found)]

    def latest_step(self) -> int:
        """The step of the newest checkpoint here; -1 when there is none."""
        paths = self.paths()
        return int(paths[-1].stem.split("-", 1)[1]) if paths else -1

    def load(self, step: int) -> dict[str, Any]:
        path = self.directory / f"ckpt-{step:09d}.pt"
        state = torch.load(path, map_location="cpu", weights_only=False)
        state["path"] = str(path)
        return state

    def save(self, state: dict[str, Any], step: int) -> Path | None:
        if not self.writer:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"ckpt-{step:09d}.pt"
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")  # hosts may share a folder
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the name says it is complete
        os.replace(tmp, path)
        for old in self.paths()[:-CHECKPOINTS_KEPT]:
            old.unlink(missing_ok=True)
        return path


@dataclass
class StepOutput:
    """What a job's forward pass gives back for one batch: the mean loss, and correct/count for accuracy."""

    loss: torch.Tensor
    correct: torch.Tensor | float
    count: int


ForwardFn = Callable[[nn.Module, Any], StepOutput]


@dataclass
class Job:
    """What a job script hands to `train`."""

    name: str
    net: nn.Module  # the bare model, on its device
    train_data: Dataset
    eval_data: Dataset
    forward: ForwardFn  # (model, batch already on the device) -> StepOutput
    to_device: Callable[[Any], Any]  # a batch from the DataLoader, moved (and formatted) for the model
    samples: Callable[[Any], int] = lambda batch: len(batch[-1])
    tokens_per_sample: int = 0  # for sequence models: the metrics then also count tokens
    optimizer: Callable[[Any, float], torch.optim.Optimizer] = (
        lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4))


class Trainer:
    """One job's training: the accelerations, the loop with accumulation, evaluation and checkpoints."""

    def __init__(self, job: Job, args: argparse.Namespace, ctx: Distributed) -> None:
        self.job, self.args, self.ctx = job, args, ctx
        self.metrics = MetricsWriter()
        self.amp_dtype = (torch.float16 if ctx.device.type == "cuda" else torch.bfloat16) if args.amp else None
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp and ctx.device.type == "cuda")
        if getattr(args, "channels_last", False):
            job.net.to(memory_format=torch.channels_last)
        self.ddp = DDP(job.net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        self.model: nn.Module = torch.compile(self.ddp) if args.compile else self.ddp
        global_batch = args.batch_size * ctx.world * args.accum_steps
        self.lr = args.lr * global_batch / REFERENCE_BATCH
        self.optimizer = job.optimizer(job.net.parameters(), self.lr)
        self.sampler = ResumableSampler(job.train_data, ctx, shuffle=True, seed=args.seed)
        self.train_loader = loader(job.train_data, self.sampler, args.batch_size, args.workers, ctx.device)
        self.eval_loader = loader(job.eval_data, EvalSampler(len(job.eval_data), ctx), max(args.batch_size, 256),
                                  args.workers, ctx.device, drop_last=False)
        # a folder the user names wins; under launch, the run's own checkpoint folder
        directory = args.checkpoint_dir or os.environ.get("LAUNCH_CHECKPOINT_DIR") or "checkpoints"
        self.checkpoints = Checkpoints(directory, writer=ctx.local_rank == 0)
        self.steps_per_epoch = len(job.train_data) // ctx.world // args.batch_size // args.accum_steps
        if self.steps_per_epoch < 1:
            raise SystemExit(f"{job.name}: {len(job.train_data)} training samples are fewer than one step of "
                             f"{args.batch_size} x {args.accum_steps} accum steps x {ctx.world} ranks")
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.last_saved = -1
        self.warned = self._on_warning()

    def _on_warning(self) -> list[bool]:
        """The scheduler's warning signal, when the launcher names one, sets a flag the loop reads (one
        that came before this handler was there is in LAUNCH_PREEMPTED)."""
        flag = [os.environ.get("LAUNCH_PREEMPTED") == "1"]
        name = os.environ.get("LAUNCH_PREEMPT_SIGNAL", "")
        if name.startswith("SIG") and hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: flag.__setitem__(0, True))
        return flag

    def preempted(self) -> bool:
        """Whether any rank got the warning (all of them agree, at the same step, so they stop together)."""
        if not os.environ.get("LAUNCH_PREEMPT_SIGNAL"):
            return False
        return self.ctx.sum([1.0 if self.warned[0] else 0.0])[0] > 0

    # ---- checkpoints -------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the newest checkpoint that every rank has (hosts keep their own copies, and
        one that was lost mid-save may be a step behind the others)."""
        mine = self.checkpoints.latest_step()
        agreed = int(self.ctx.minimum(mine))
        if agreed < 0:
            where = self.checkpoints.directory
            self.ctx.say(f"checkpoints: none in {where}, starting from scratch" if mine < 0 else
                         f"checkpoints: not every host has one in {where}, starting from scratch")
            return
        try:
            state = self.checkpoints.load(agreed)
        except FileNotFoundError:
            raise SystemExit(f"checkpoint of step {agreed}, the newest that every rank has, is gone from "
                             f"{self.checkpoints.directory}; start afresh without --resume") from None
        except Exception as exc:  # a truncated or foreign file: torch.load raises what unpickling raises
            raise SystemExit(f"checkpoint of step {agreed} in {self.checkpoints.directory} cannot be read "
                             f"({type(exc).__name__}); remove it to resume from the one before") from None
        try:
            self.job.net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state["scaler"]:  # empty when the run that saved it had no gradient scaler
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise SystemExit(f"checkpoint {state['path']} does not fit this model or its flags "
                             f"(start afresh without --resume): {str(exc).splitlines()[0]}") from None
        for group in self.optimizer.param_groups:  # the rate for this run's effective batch, not the saved run's
            group["lr"] = self.lr
        # Every host loaded its own copy: they must hold the same weights, or DDP would train apart.
        checksum = float(sum(t.double().sum() for t in self.job.net.state_dict().values() if t.is_floating_point()))
        if self.ctx.minimum(checksum) != -self.ctx.minimum(-checksum):
            raise SystemExit(f"checkpoint of step {agreed}: the hosts' copies in {self.checkpoints.directory} differ "
                             "(left by different runs?); start afresh without --resume")
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        # The position in the epoch, as a count of samples over all ranks: right at another world size too.
        samples_done = state["epoch_samples"]
        per_step = self.args.batch_size * self.args.accum_steps * self.ctx.world
        self.step_in_epoch = samples_done // per_step
        self.last_saved = self.global_step
        self.ctx.say(f"checkpoints: resumed from {state['path']}: epoch {self.epoch}, "
                     f"{self.step_in_epoch} of {self.steps_per_epoch} steps into it, step {self.global_step} in all")

    def save(self) -> None:
        if self.last_saved == self.global_step:
            return
        per_step = self.args.batch_size * self.args.accum_steps * self.ctx.world
        state = {
            "model": self.job.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "epoch_samples": self.step_in_epoch * per_step,
            "global_step": self.global_step,
            "world_size": self.ctx.world,
        }
        path = self.checkpoints.save(state, self.global_step)
        self.last_saved = self.global_step
        if path is not None and self.ctx.main:
            print(f"checkpoint: step {self.global_step} -> {path}", flush=True)

    # ---- the loop ----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def optimizer_step(self, micro_batches: Iterator[Any]) -> tuple[float, float, float, int]:
        """Forward and backward over `accum_steps` micro-batches, then one optimizer step.

        Returns the sums over the micro-batches of loss x samples, correct, count, and samples.
        """
        accum = self.args.accum_steps
        loss_sum = correct = count = 0.0
        samples = 0
        for k in range(accum):
            batch = self.job.to_device(next(micro_batches))
            sync = k == accum - 1  # all-reduce the gradients once, on the last micro-batch
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with self.autocast():
                    out = self.job.forward(self.model, batch)
                self.scaler.scale(out.loss / accum).backward()
            n = self.job.samples(batch)
            samples += n
            loss_sum += out.loss.detach().float().item() * n
            correct += float(out.correct)
            count += out.count
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, correct, count, samples

    def train(self) -> tuple[float, float] | None:
        """Train to the end (or to --max-steps); the last held-out loss and accuracy (None: nothing left to do)."""
        args, ctx = self.args, self.ctx
        last_eval = None
        ctx.say(f"{self.job.name}: world size {ctx.world}, backend {ctx.backend}, device {ctx.device.type}; "
                f"batch {args.batch_size} x {args.accum_steps} accum steps per rank "
                f"(global {args.batch_size * args.accum_steps * ctx.world}), lr {self.lr:.4g}, "
                f"{self.steps_per_epoch} steps per epoch; " + self.describe())
        self.resume()
        if self.epoch >= args.epochs or self.done():
            ctx.say(f"nothing left to train: the checkpoint is at epoch {self.epoch}, step {self.global_step}, and the run "
                    f"asks for {args.epochs} epoch(s)" + (f" or {args.max_steps} steps" if args.max_steps else "")
                    + "; raise --epochs (or --max-steps) to train on")
        first_step = True
        while self.epoch < args.epochs and not self.done():
            per_rank_skip = self.step_in_epoch * args.batch_size * args.accum_steps
            self.sampler.start_epoch(self.epoch, skip=per_rank_skip)
            self.job.net.train()
            totals = [0.0, 0.0, 0.0, 0.0]  # loss x samples, correct, count, samples
            started = time.perf_counter()
            batches = iter(self.train_loader)
            while self.step_in_epoch < self.steps_per_epoch and not self.done():
                t0 = time.perf_counter()
                loss_sum, correct, count, samples = self.optimizer_step(batches)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                elapsed = time.perf_counter() - t0
                if first_step and args.compile:
                    ctx.say(f"torch.compile: the first step, compiling included, took {elapsed:.1f} s")
                first_step = False
                self.step_in_epoch += 1
                self.global_step += 1
                for i, value in enumerate((loss_sum, correct, count, samples)):
                    totals[i] += value
                self.metrics.log(samples=samples, step_time_s=elapsed, loss=round(loss_sum / max(samples, 1), 5),
                                 epoch=self.epoch, **self.token_count(samples))
                if args.log_every and self.global_step % args.log_every == 0:
                    ctx.say(f"epoch {self.epoch} step {self.step_in_epoch}/{self.steps_per_epoch}: "
                            f"loss {loss_sum / max(samples, 1):.4f}, {samples / elapsed:.0f} samples/s on rank 0")
                if args.checkpoint_every and self.global_step % args.checkpoint_every == 0:
                    self.save()
                if self.preempted():
                    self.save()
                    ctx.say(f"stopping at step {self.global_step}: the scheduler's time limit or a preemption is near; "
                            "the checkpoint is saved and the next run resumes from it")
                    return last_eval
            del batches
            loss_sum, correct, count, samples = ctx.sum(totals)
            eval_loss, eval_accuracy, eval_count = self.evaluate()
            last_eval = eval_loss, eval_accuracy
            seconds = time.perf_counter() - started
            ctx.say(f"epoch {self.epoch}: train loss {loss_sum / max(samples, 1):.4f}, accuracy {correct / max(count, 1):.3f}"
                    f" | held-out loss {eval_loss:.4f}, accuracy {eval_accuracy:.3f} ({eval_count} samples)"
                    f" | {int(samples)} samples in {seconds:.1f} s")
            if ctx.main:
                self.metrics.record(epoch=self.epoch, global_step=self.global_step,
                                    train_loss=round(loss_sum / max(samples, 1), 5),
                                    eval_loss=round(eval_loss, 5), eval_accuracy=round(eval_accuracy, 5))
            if self.step_in_epoch >= self.steps_per_epoch:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.save()
        self.save()
        return last_eval

    def token_count(self, samples: int) -> dict[str, int]:
        return {"tokens": samples * self.job.tokens_per_sample} if self.job.tokens_per_sample else {}

    def done(self) -> bool:
        return bool(self.args.max_steps) and self.global_step >= self.args.max_steps

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float, int]:
        """Mean loss and accuracy on the held-out split, over every rank (the bare model: no recompiling)."""
        self.job.net.eval()
        loss_sum = correct = count = samples = 0.0
        for batch in self.eval_loader:
            batch = self.job.to_device(batch)
            with self.autocast():
                out = self.job.forward(self.job.net, batch)
            n = self.job.samples(batch)
            loss_sum += out.loss.float().item() * n
            correct += float(out.correct)
            count += out.count
            samples += n
        self.job.net.train()
        loss_sum, correct, count, samples = self.ctx.sum([loss_sum, correct, count, samples])
        return loss_sum / max(samples, 1), correct / max(count, 1), int(samples)

    def describe(self) -> str:
        args = self.args
        on = [name for name, flag in (("amp " + str(self.amp_dtype).removeprefix("torch."), args.amp),
                                      ("channels-last", getattr(args, "channels_last", False)),
                                      ("compile", args.compile), (f"{args.workers} workers", args.workers))
              if flag]
        return "accelerations: " + (", ".join(on) if on else "none")


def finish() -> None:
    # every rank past its last collective before any tears its connections down: gloo's threads of a
    # rank torn down while a peer still talks to it can end the process in std::terminate at exit
    dist.barrier()
    dist.destroy_process_group()
