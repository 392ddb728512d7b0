"""A small transformer language model on the Python standard library's own source: a job that is not vision.

Every Python install carries the text: the `.py` files of the standard library, read in sorted order
and cut at `--corpus-mb` megabytes. The model reads bytes (a vocabulary of 256) and predicts each
next byte of a `--context`-byte window; the last 5% of the text is held out. Every rank reads the
text itself and the ranks agree on the shortest one, so hosts with different Python builds still
split one data set the same way. After every epoch rank 0 prints the held-out loss in bits per byte
and the next-byte accuracy.

    torchrun --nproc-per-node 2 transformer_lm.py --epochs 1 --amp --compile

The flags it shares with the reference job (amp, compile, accumulation, workers, checkpoints) are
described in recipe.py.
"""

from __future__ import annotations

import argparse
import math
import sysconfig
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

import recipe

VOCAB = 256
HELD_OUT = 0.05


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-mb", type=float, default=4.0, help="megabytes of standard library source to train on")
    parser.add_argument("--context", type=int, default=128, help="bytes per training window")
    parser.add_argument("--width", type=int, default=128, help="model width")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    recipe.add_arguments(parser, batch_size=32, lr=0.004, image_model=False)
    args = parser.parse_args()
    recipe.check_arguments(parser, args)
    if args.context < 2 or args.corpus_mb <= 0 or args.width % args.heads:
        parser.error("--context must be at least 2, --corpus-mb above 0, and --width a multiple of --heads")
    return args


def stdlib_text(limit_bytes: int) -> bytes:
    """The standard library's .py files in sorted order, up to `limit_bytes`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= limit_bytes:
            break
    return b"".join(chunks)[:limit_bytes]


class Windows(Dataset):
    """Non-overlapping (input, target) windows of a byte string, the target shifted by one byte."""

    def __init__(self, data: torch.Tensor, context: int) -> None:
        self.data, self.context = data, context

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.context

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.context
        chunk = self.data[start:start + self.context + 1].long()
        return chunk[:-1], chunk[1:]


class ByteTransformer(nn.Module):
    """A decoder-only transformer: byte and position embeddings, causal pre-norm blocks, a byte head."""

    def __init__(self, context: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.zeros(1, context, width))
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.embed(tokens) + self.position[:, :length]
        x = self.blocks(x, mask=self.mask[:length, :length], is_causal=True)
        return self.head(self.norm(x))


def datasets(args: argparse.Namespace, ctx: recipe.Distributed) -> tuple[Dataset, Dataset]:
    text = stdlib_text(int(args.corpus_mb * 1_000_000))
    text = text[:int(ctx.minimum(len(text)))]  # every rank keeps the same length
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    cut = int(len(data) * (1 - HELD_OUT))
    train, held_out = Windows(data[:cut], args.context), Windows(data[cut:], args.context)
    ctx.say(f"data: {len(text) / 1e6:.2f} MB of the Python standard library's source from "
            f"{sysconfig.get_paths()['stdlib']}: {len(train)} training and {len(held_out)} held-out windows "
            f"of {args.context} bytes")
    return train, held_out


def main() -> None:
    args = parse_args()
    ctx = recipe.init_distributed()
    torch.manual_seed(args.seed)
    train_data, eval_data = datasets(args, ctx)
    net = ByteTransformer(args.context, args.width, args.layers, args.heads).to(ctx.device)

    def to_device(batch):
        return tuple(t.to(ctx.device, non_blocking=True) for t in batch)

    def forward(model: nn.Module, batch) -> recipe.StepOutput:
        tokens, targets = batch
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        return recipe.StepOutput(loss, (logits.argmax(-1) == targets).sum().item(), targets.numel())

    def adamw(params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)

    job = recipe.Job("transformer-lm", net, train_data, eval_data, forward, to_device,
                     tokens_per_sample=args.context, optimizer=adamw)
    last = recipe.Trainer(job, args, ctx).train()
    if last is not None:
        ctx.say(f"held-out: {last[0] / math.log(2):.3f} bits per byte, next-byte accuracy {last[1]:.3f}")
    recipe.finish()


if __name__ == "__main__":
    main()
