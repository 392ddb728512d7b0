"""Prints the workdir's version.txt as this rank sees it, at start and again after `--hold` seconds:
a rank that saw another run's edit would print two different versions."""

import argparse
import hashlib
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--hold", type=float, default=0.0)
args = parser.parse_args()
rank = os.environ.get("RANK", "?")


def version() -> str:
    with open("version.txt") as fh:
        return fh.read().strip()


def tree() -> str:
    """Every file this rank can see in its workdir, with a hash of its content."""
    found = []
    for root, _, names in os.walk("."):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                found.append(f"{path}:{hashlib.sha256(fh.read()).hexdigest()[:8]}")
    return " ".join(sorted(found))


print(f"rank {rank} version {version()}", flush=True)
print(f"rank {rank} files {tree()}", flush=True)
time.sleep(args.hold)
print(f"rank {rank} after hold version {version()}", flush=True)
