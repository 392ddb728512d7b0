"""Ranks in lock step, for restart tests: one all-reduce per step, so no rank is ever a step ahead.

--steps/--sleep     print `step N` per step and keep the next step in $LAUNCH_CHECKPOINT_DIR;
                    a restarted rank resumes from it and prints `resumed from step N`
--fail-rank R       that rank exits with --fail-code (3) at --fail-step, once (a marker in its
--fail-step K       $LAUNCH_CHECKPOINT_DIR remembers it), before that step's all-reduce

When rank R fails, every other rank has finished step K - 1 and waits in step K's all-reduce:
the healthy ranks are certainly still running, however unevenly the ranks started, and a
restart resumes every rank from step K. A rank whose all-reduce fails because a peer left waits
to be stopped (as a rank blocked in a collective does): the failed rank is the only failure.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=20)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--fail-rank", type=int)
p.add_argument("--fail-step", type=int, default=0)
p.add_argument("--fail-code", type=int, default=3)
args = p.parse_args()

dist.init_process_group(backend="gloo")
rank = dist.get_rank()
checkpoints = os.environ["LAUNCH_CHECKPOINT_DIR"]
state = os.path.join(checkpoints, f"rank{rank}.step")
marker = os.path.join(checkpoints, "failed-once")
metrics_dir = os.environ.get("LAUNCH_METRICS_DIR")
first = 0
if os.path.exists(state):
    with open(state) as fh:
        first = int(fh.read())
    print(f"resumed from step {first}", flush=True)
for step in range(first, args.steps):
    if args.fail_rank == rank and step == args.fail_step and not os.path.exists(marker):
        open(marker, "w").close()
        print(f"rank {rank} failing on purpose at step {step}", flush=True)
        sys.exit(args.fail_code)
    start = time.perf_counter()
    try:
        dist.all_reduce(torch.ones(1))
    except RuntimeError:
        print(f"a peer left step {step}'s all-reduce; waiting to be stopped", flush=True)
        while True:
            time.sleep(1)
    time.sleep(args.sleep)
    print(f"step {step}", flush=True)
    if metrics_dir:
        with open(os.path.join(metrics_dir, f"rank{rank}.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": step, "samples": 8, "step_time_s": time.perf_counter() - start}) + "\n")
    with open(state + ".tmp", "w") as fh:
        fh.write(str(step + 1))
    os.replace(state + ".tmp", state)
dist.barrier()  # every rank past its last collective before the group is torn down
dist.destroy_process_group()
