#!/usr/bin/env bash
# Re-execute notebooks/reproduce_figures.ipynb and store its outputs (tests/test_notebook.py compares a fresh
# execution with them). Run after changing the notebook, the report code or results/mini/, then commit the notebook.
#   bash scripts/refresh-notebook.sh           # refresh (about half a minute: no model, no cache)
#   bash scripts/refresh-notebook.sh --check   # only compare; exit 1 and show what differs
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE
if [[ "${1:-}" == "--check" ]]; then
  exec python3 -m tests.helpers.notebook
fi
exec python3 -m tests.helpers.notebook --write
