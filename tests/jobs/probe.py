"""A test job that needs no torch in the ranks: it reports what it was given and can misbehave.

--print-args     print `args: <json of argv>`
--hash-env NAME  print `env NAME sha256 <hex>` (never the value), or `env NAME missing`
--steps/--sleep  write one metrics record and print `step N` per step
--fail-rank R    that rank exits with --fail-code after --fail-step steps
--no-metrics     write no metrics file
--fail-once      with --fail-rank: fail only if no earlier attempt failed (a marker in
                 $LAUNCH_CHECKPOINT_DIR remembers it), so a restart succeeds
--checkpoint     keep each rank's next step in $LAUNCH_CHECKPOINT_DIR and resume from it,
                 printing `resumed from step N`
"""

import argparse
import hashlib
import json
import os
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--print-args", action="store_true")
p.add_argument("--hash-env", action="append", default=[])
p.add_argument("--steps", type=int, default=3)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--fail-rank", type=int)
p.add_argument("--fail-step", type=int, default=0)
p.add_argument("--fail-code", type=int, default=3)
p.add_argument("--no-metrics", action="store_true")
p.add_argument("--fail-once", action="store_true")
p.add_argument("--checkpoint", action="store_true")
args, rest = p.parse_known_args()

rank = int(os.environ["RANK"])
if args.print_args:
    print("args: " + json.dumps(sys.argv[1:]), flush=True)
for name in args.hash_env:
    value = os.environ.get(name)
    digest = hashlib.sha256(value.encode()).hexdigest() if value is not None else "missing"
    print(f"env {name} sha256 {digest}", flush=True)
print(f"to stderr from rank {rank}", file=sys.stderr, flush=True)
metrics_dir = os.environ.get("LAUNCH_METRICS_DIR")
checkpoints = os.environ.get("LAUNCH_CHECKPOINT_DIR", "")
state = os.path.join(checkpoints, f"rank{rank}.step")
first = 0
if args.checkpoint and os.path.exists(state):
    with open(state) as fh:
        first = int(fh.read())
    print(f"resumed from step {first}", flush=True)
marker = os.path.join(checkpoints, "failed-once")
for step in range(first, args.steps):
    if args.fail_rank == rank and step == args.fail_step and not (args.fail_once and os.path.exists(marker)):
        if args.fail_once:
            open(marker, "w").close()
        print(f"rank {rank} failing on purpose", flush=True)
        sys.exit(args.fail_code)
    start = time.perf_counter()
    time.sleep(args.sleep)
    print(f"step {step}", flush=True)
    if metrics_dir and not args.no_metrics:
        with open(os.path.join(metrics_dir, f"rank{rank}.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": step, "samples": 8, "step_time_s": time.perf_counter() - start}) + "\n")
    if args.checkpoint:
        with open(state + ".tmp", "w") as fh:
            fh.write(str(step + 1))
        os.replace(state + ".tmp", state)
