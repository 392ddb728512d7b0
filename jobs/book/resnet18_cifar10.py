"""ResNet-18 on CIFAR-10 with DistributedDataParallel: the reference job.

With `--data DIR` (or CIFAR10_DIR) naming a folder that holds `cifar-10-batches-py`, it trains on
CIFAR-10 with the usual augmentation and evaluates on its test split; otherwise on a synthetic data
set of CIFAR-10's shape whose classes can be learned (see cifar.py), and says so. After every epoch
rank 0 prints the training loss and accuracy and the held-out loss and accuracy, over all ranks.

    torchrun --nproc-per-node 2 resnet18_cifar10.py --epochs 2 --amp --channels-last

Flags and what each does: recipe.py. `--pretrained FILE` starts from a ResNet-18 state dict saved in
a file (torchvision's ImageNet weights, for one); tensors whose shape does not fit (the 1000-class
`fc` layer) keep their fresh initialisation, and the log names them.
"""

from __future__ import annotations

import argparse
import os

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import cifar
import recipe


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("CIFAR10_DIR"), help="folder with cifar-10-batches-py")
    parser.add_argument("--synthetic-size", type=int, default=8192, help="training images without --data")
    parser.add_argument("--eval-size", type=int, default=1000, help="held-out images without --data")
    parser.add_argument("--pretrained", metavar="FILE", help="a ResNet-18 state dict to start from")
    parser.add_argument("--norm", choices=("batch", "group"), default="batch",
                        help="normalisation layers: group norm does not depend on how a batch is split")
    recipe.add_arguments(parser, batch_size=32, lr=0.1, image_model=True)
    args = parser.parse_args()
    recipe.check_arguments(parser, args)
    if args.synthetic_size < 1 or args.eval_size < 1:
        parser.error("--synthetic-size and --eval-size must be at least 1")
    return args


def datasets(args: argparse.Namespace, ctx: recipe.Distributed) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    if cifar.has_cifar(args.data):
        ctx.say(f"data: CIFAR-10 from {args.data}")
        return cifar.CIFAR10Folder(args.data, train=True), cifar.CIFAR10Folder(args.data, train=False)
    why = f"no {cifar.FOLDER} in {args.data}" if args.data else "no --data given"
    ctx.say(f"data: synthetic, CIFAR-10's shape, {args.synthetic_size} training and {args.eval_size} held-out images ({why})")
    return (cifar.SyntheticCIFAR(args.synthetic_size, seed=args.seed),
            cifar.SyntheticCIFAR(args.eval_size, seed=args.seed, offset=10**9))


def resnet18(norm: str) -> nn.Module:
    """torchvision's ResNet-18 for 10 classes, with batch or group normalisation."""
    layer = (lambda channels: nn.GroupNorm(32, channels)) if norm == "group" else None
    return torchvision.models.resnet18(num_classes=cifar.SyntheticCIFAR.classes, norm_layer=layer)


def build_model(args: argparse.Namespace, ctx: recipe.Distributed) -> nn.Module:
    net = resnet18(args.norm)
    if args.pretrained:
        load_pretrained(net, args.pretrained, ctx)
    return net.to(ctx.device)


def load_pretrained(net: nn.Module, path: str, ctx: recipe.Distributed) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises whatever unpickling a foreign file raises
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SystemExit(f"--pretrained {path}: cannot be read as a state dict: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # one of our own checkpoints
        state = state["model"]
    own = net.state_dict()
    fits = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if not fits:
        raise SystemExit(f"--pretrained {path}: no tensor fits a ResNet-18 (is it a ResNet-18 state dict?)")
    net.load_state_dict(fits, strict=False)
    fresh = sorted(k for k in own if k not in fits)
    ctx.say(f"pretrained: {len(fits)} tensors from {path}" + (f"; kept fresh: {', '.join(fresh)}" if fresh else ""))


def main() -> None:
    args = parse_args()
    ctx = recipe.init_distributed()
    torch.manual_seed(args.seed)
    train_data, eval_data = datasets(args, ctx)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def to_device(batch):
        images, labels = batch
        images = images.to(ctx.device, non_blocking=True).contiguous(memory_format=memory_format)
        return images, labels.to(ctx.device, non_blocking=True)

    def forward(model: nn.Module, batch) -> recipe.StepOutput:
        images, labels = batch
        logits = model(images)
        return recipe.StepOutput(F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum().item(), len(labels))

    job = recipe.Job("resnet18", build_model(args, ctx), train_data, eval_data, forward, to_device)
    recipe.Trainer(job, args, ctx).train()
    recipe.finish()


if __name__ == "__main__":
    main()
