"""A script written for bare torchrun, as PyTorch's DDP tutorial series writes `multinode.py`: it
saves `snapshot.pt` in its working directory every epoch and, when it starts, resumes from the
`snapshot.pt` it finds there. It knows nothing of launch.

    torchrun --nproc-per-node 2 snapshot_job.py EPOCHS [--out NAME]

Prints `resuming from epoch N` or `starting fresh`, then `epoch N done` per epoch; local rank 0
saves (one copy per host, since hosts share no folder).
`--out NAME` also writes NAME (a small text file) in the working directory at the end.
"""

import argparse
import os

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("epochs", type=int)
parser.add_argument("--out", default="")
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
start = 0
if os.path.exists("snapshot.pt"):
    snapshot = torch.load("snapshot.pt")
    model.module.load_state_dict(snapshot["MODEL_STATE"])
    start = snapshot["EPOCHS_RUN"]
    print(f"resuming from epoch {start}", flush=True)
else:
    print("starting fresh", flush=True)
for epoch in range(start, args.epochs):
    loss = model(torch.ones(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if int(os.environ["LOCAL_RANK"]) == 0:
        torch.save({"MODEL_STATE": model.module.state_dict(), "EPOCHS_RUN": epoch + 1}, "snapshot.pt")
    print(f"epoch {epoch} done", flush=True)
if args.out and rank == 0:
    with open(args.out, "w") as fh:
        fh.write(f"trained to epoch {args.epochs}\n")
dist.barrier()  # every rank past its last collective before the group goes (gloo may abort a rank otherwise)
dist.destroy_process_group()
