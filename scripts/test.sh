#!/usr/bin/env bash
# What CI runs: install (only when needed), lint, check the import layers, run the tests.
#   scripts/test.sh                  # everything (slow lane included: models, subprocesses, notebook)
#   scripts/test.sh -m "not slow"    # the fast lane (about 5 minutes on 2 cores); any pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
# Reinstall only when the dependency declarations changed since the last install, or a tool is missing.
stamp=.cache/install.sha256
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]] || ! command -v ruff lint-imports >/dev/null \
    || ! python3 -m pip show -q divbench >/dev/null 2>&1; then
  bash scripts/install.sh
  mkdir -p .cache && echo "$want" > "$stamp"
fi
ruff check .
lint-imports  # the layers: experiments > eval > finetune > selection > metrics > divcore (pyproject.toml)
# torch on 2 threads slows down ~25x when another process spins; passive OpenMP waiting avoids it.
OMP_WAIT_POLICY=PASSIVE python3 -m pytest -q "$@"
