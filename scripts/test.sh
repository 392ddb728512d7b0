#!/usr/bin/env bash
# Set up everything, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-lab.sh
echo
echo "== running the tests"
# --durations: the slowest tests, where the suite's time goes
exec .venv/bin/python -m pytest -rs --durations=25 "$@"
