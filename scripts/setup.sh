#!/usr/bin/env bash
# Set up everything the launcher needs on this machine: a virtual environment in .venv with the
# launcher, its test tools, and PyTorch + torchvision (for one-box runs of the example jobs).
# Safe to run again: what is already there is kept.
#   TORCH_PACKAGES  what to install for PyTorch (default: the CPU-capable build pinned below)
#   PYTHON          the interpreter to build the venv from (default: python3, 3.11 or newer)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_PACKAGES=${TORCH_PACKAGES:-"torch==2.14.1 torchvision==0.29.1"}

say() { printf '\n== %s\n' "$*"; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: $PYTHON is missing or older than Python 3.11; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PYTHON" -m venv .venv
fi

say "installing the launcher and PyTorch into .venv"
# shellcheck disable=SC2086  # TORCH_PACKAGES is a list of requirement specifiers
.venv/bin/python -m pip install --quiet -e '.[dev]' $TORCH_PACKAGES 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c 'import launcher, torch, torchvision; print("ready: launch", launcher.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__)'
