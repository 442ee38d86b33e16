#!/usr/bin/env bash
# Install (only when needed), lint, check the import layers, and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
ruff check .
lint-imports  # the layers: experiments > eval > finetune > selection > metrics > divcore (pyproject.toml)
# torch on 2 threads slows down ~25x when another process spins; passive OpenMP waiting avoids it.
OMP_WAIT_POLICY=PASSIVE python3 -m pytest -q
