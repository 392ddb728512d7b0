"""ResNet-18 on CIFAR-10 with DistributedDataParallel: the reference job.

Reads CIFAR-10 from --data (a folder holding `cifar-10-batches-py`, torchvision's layout) when
given; otherwise it trains on torchvision's FakeData with CIFAR-10's shape (3x32x32, 10 classes)
and says so. Every rank writes one metrics record per step through launcher.node.metrics. At the end of
each epoch rank 0 prints the mean training loss and accuracy over all ranks.
"""

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision
import torchvision.transforms as T
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from launcher.node.metrics import MetricsWriter

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.environ.get("CIFAR10_DIR"), help="folder with cifar-10-batches-py")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (0: all)")
    p.add_argument("--fake-size", type=int, default=2048, help="FakeData images when no --data")
    return p.parse_args()


def dataset(args, rank):
    normalize = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    if args.data and (Path(args.data) / "cifar-10-batches-py").is_dir():
        train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), normalize])
        if rank == 0:
            print(f"data: CIFAR-10 from {args.data}", flush=True)
        return torchvision.datasets.CIFAR10(args.data, train=True, download=False, transform=train)
    if rank == 0:
        why = f"no cifar-10-batches-py in {args.data}" if args.data else "no --data given"
        print(f"data: FakeData with CIFAR-10's shape, {args.fake_size} images ({why})", flush=True)
    return torchvision.datasets.FakeData(args.fake_size, (3, 32, 32), 10, transform=normalize, random_offset=0)


def main():
    args = parse_args()
    backend = os.environ.get("LAUNCH_BACKEND", "gloo")
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.manual_seed(0)

    data = dataset(args, rank)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=device.type == "cuda", drop_last=True)
    model = DDP(torchvision.models.resnet18(num_classes=10).to(device),
                device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    metrics = MetricsWriter()
    if rank == 0:
        print(f"resnet18: world size {world}, backend {backend}, device {device.type}, "
              f"batch {args.batch_size} per rank, {len(loader)} steps per epoch", flush=True)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        totals = torch.zeros(3, device=device)  # loss sum, correct, samples
        for step, (images, labels) in enumerate(loader):
            if args.max_steps and step >= args.max_steps:
                break
            start = time.perf_counter()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits = model(images)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            metrics.log(samples=len(labels), step_time_s=elapsed, loss=round(loss.item(), 5), epoch=epoch)
            totals += torch.tensor([loss.item() * len(labels), (logits.argmax(1) == labels).sum().item(), len(labels)],
                                   device=device)
        dist.all_reduce(totals)
        if rank == 0:
            loss_sum, correct, seen = totals.tolist()
            print(f"epoch {epoch}: loss {loss_sum / max(seen, 1):.4f}, accuracy {correct / max(seen, 1):.3f}, "
                  f"{int(seen)} samples", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
