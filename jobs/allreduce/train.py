"""A small, fast CPU job with a known answer: every rank adds (rank + 1) into an all-reduce.

After `--steps` all-reduces the sum must be world_size * (world_size + 1) / 2 on every rank;
each rank prints `allreduce: rank R of W: sum S (expected E) OK` and exits 1 if it is wrong.
It writes the metrics protocol by hand (no launcher import), one JSON line per step.
Options for exercising the launcher: --fail-rank/--fail-step make one rank exit with
--fail-code, --sleep slows every step, --print-args prints its arguments as JSON.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--numel", type=int, default=1 << 16, help="floats per all-reduce")
    p.add_argument("--batch", type=int, default=32, help="samples a step counts as, per rank")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds of extra work per step")
    p.add_argument("--fail-rank", type=int, default=None)
    p.add_argument("--fail-step", type=int, default=0)
    p.add_argument("--fail-code", type=int, default=3)
    p.add_argument("--print-args", action="store_true")
    return p.parse_known_args()


def main():
    args, extra = parse_args()
    if args.print_args:
        print("args: " + json.dumps(sys.argv[1:]), flush=True)
    backend = os.environ.get("LAUNCH_BACKEND", "gloo")
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    metrics_dir = os.environ.get("LAUNCH_METRICS_DIR")
    metrics = open(os.path.join(metrics_dir, f"rank{rank}.jsonl"), "a") if metrics_dir else None

    total = torch.zeros(args.numel)
    for step in range(args.steps):
        start = time.perf_counter()
        if args.fail_rank == rank and step == args.fail_step:
            print(f"allreduce: rank {rank} failing on purpose at step {step}", flush=True)
            sys.exit(args.fail_code)
        contribution = torch.full((args.numel,), float(rank + 1))
        dist.all_reduce(contribution)
        total += contribution
        if args.sleep:
            time.sleep(args.sleep)
        elapsed = time.perf_counter() - start
        if metrics:
            metrics.write(json.dumps({"step": step, "samples": args.batch, "step_time_s": elapsed}) + "\n")
            metrics.flush()

    got = total[0].item() / args.steps
    expected = world * (world + 1) / 2
    ok = abs(got - expected) < 1e-6 and torch.all(total == total[0]).item()
    print(f"allreduce: rank {rank} of {world}: sum {got:g} (expected {expected:g}) {'OK' if ok else 'WRONG'}", flush=True)
    dist.destroy_process_group()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
