"""A DistributedDataParallel script as a book's chapter on distributed training writes it, not for `launch`.

It reads RANK and WORLD_SIZE at import, sets its own thread count, takes --backend as an argument,
trains a small CNN on synthetic images with a DistributedSampler and a plain `optimizer.step()`
loop, evaluates under `torch.no_grad()` after every epoch, and prints its loss. It imports nothing
of the launcher and writes no metrics. The tests read from its output how many optimizer steps it
made: `rank R: S optimizer steps of B samples`.
--accumulate K steps once every K batches (gradient accumulation).
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

rank = int(os.environ["RANK"])
world_size = int(os.environ["WORLD_SIZE"])
torch.set_num_threads(1)

parser = argparse.ArgumentParser(description="Train a small CNN with DDP")
parser.add_argument("--backend", type=str, default="gloo", help="gloo or nccl")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--samples", type=int, default=512, help="size of the synthetic training set")
parser.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
args = parser.parse_args()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def synthetic(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator))


def main():
    dist.init_process_group(backend=args.backend, rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = DDP(Net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    train_set, test_set = synthetic(args.samples, 1), synthetic(100, 2)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    test_loader = DataLoader(test_set, batch_size=50)

    steps = 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for i, (images, labels) in enumerate(train_loader):
            loss = loss_fn(model(images), labels) / args.accumulate
            loss.backward()
            if (i + 1) % args.accumulate == 0:
                optimizer.step()
                optimizer.zero_grad()
                steps += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
        print(f"rank {rank}: epoch {epoch} loss {loss.item() * args.accumulate:.4f} test accuracy {correct / len(test_set):.2f}")
    print(f"rank {rank}: {steps} optimizer steps of {args.batch_size * args.accumulate} samples")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
