"""Numeric precision of fine-tuning and evaluation on the CPU: ``finetune.precision`` / ``eval.precision``.

Values: ``auto`` (bfloat16 when this machine's CPU multiplies bfloat16 natively: the ``avx512_bf16`` or AMX
(``amx_bf16``) flag in ``/proc/cpuinfo``; float32 otherwise), ``bf16`` or ``fp32``. Absent means ``fp32``: the model
dtype and trainer flags as the config writes them (``dtype``, ``args.bf16``), the project's behaviour before this
setting existed. ``auto`` depends on the machine, not on ``device``, so ``device`` stays a runtime knob that changes
no cache key (a GPU multiplies bfloat16 natively too; the GPU configs set their dtype themselves and no precision).

**Training in bf16: bfloat16 base weights, float32 LoRA parameters, no autocast.** The base model is loaded in
bfloat16 (TRL's ``model_init_kwargs.dtype``); PEFT's ``get_peft_model`` keeps the adapter in float32
(``autocast_adapter_dtype=True``, its default, which TRL leaves on outside DeepSpeed ZeRO-3), so the LoRA weights
and their AdamW moments are float32 master copies and the small updates (lr 2e-4 on a 135M model) are not rounded
away; PEFT's LoRA layer casts its input up to the adapter's dtype and its output back, so the adapter branch runs
in float32 too. The alternative, ``args.bf16=true`` (accelerate's ``torch.autocast("cpu", bfloat16)`` over float32
weights), is worse on a CPU for a frozen base: autocast caches the bfloat16 copy of a weight only for leaves that
require grad, so every forward re-casts all 134M frozen weights (about 0.8 GB of memory traffic a step on a
machine whose two cores stream ~10-20 GB/s), holds both copies in memory, and keeps the activations between
matmuls in float32 (twice the traffic of the element-wise ops, which dominate once the matmuls run at the bf16
rate). Norms and softmax stay numerically safe either way: Llama's RMSNorm and SDPA accumulate in float32, and the
loss is taken on float32 log-probabilities.

**Evaluation in bf16.** The model evaluated is the model trained: a bfloat16 base with the float32 adapter left
unmerged (``finetune.models.load_causal_lm(..., dtype="bfloat16", merge=False)``), so the adapter branch runs in
float32 as in a bf16 fine-tune and the scores are those of the function it trained. Merging instead rounds W + BA to
bfloat16 once more, a rounding that model never saw; for a float32-trained adapter both are roundings of the same
sum, and on the numerics check of ``benchmarks/bench_cpu_training.py --numerics`` the two differ by less than
bf16 evaluation's own error (the float32 path merges, as it always did). Log-probabilities are taken in float32.
That check also shows bf16 *evaluation* moving scores by several training-seed SDs where bf16 *training* (scored in
float32) does not: see benchmarks/README.md before evaluating in bf16.

**Cache keys.** The *resolved* precision is part of a stage's key when it is ``bf16`` and absent when it is
``fp32``, so every key computed before this setting existed (and its float32 numbers) stays valid
(:func:`keyed_finetune`, called by ``experiments.keys.result_config``). ``finetune.padding_free`` is keyed the same
way: only when it is on.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from divcore.errors import InputError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bfloat16 dot products
TORCH_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU in a ``/proc/cpuinfo`` text (empty when it lists none)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def this_cpu_has_bf16() -> bool:
    """Whether this machine's CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), from ``/proc/cpuinfo``; where
    that file does not exist (macOS, Windows), from torch's own cpuinfo probe."""
    if CPUINFO.exists():
        return bool(cpu_flags(CPUINFO.read_text()) & BF16_CPU_FLAGS)
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(value: str | None, *, has_bf16: bool | None = None, where: str = "precision") -> str:
    """``bf16`` or ``fp32``: ``auto`` is ``bf16`` on a CPU with native bfloat16 (``has_bf16``, by default this
    machine's) and ``fp32`` elsewhere; absent is ``fp32`` (the configured dtype, unchanged)."""
    if value is None:
        return "fp32"
    if value not in PRECISIONS:
        raise InputError(f"{where} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    if value != "auto":
        return value
    return "bf16" if (this_cpu_has_bf16() if has_bf16 is None else has_bf16) else "fp32"


def finetune_precision(cfg: dict[str, Any]) -> str:
    """The resolved ``finetune.precision``: ``bf16`` or ``fp32``."""
    return resolve_precision(cfg.get("precision"), where="finetune.precision")


def padding_free(cfg: dict[str, Any]) -> bool:
    """The resolved ``finetune.padding_free``: ``auto`` is on exactly when the precision resolves to bf16 (whose
    numbers differ from the float32 path's anyway), so float32 training keeps today's padded batches bit for bit."""
    value = cfg.get("padding_free", False)
    if value == "auto":
        return finetune_precision(cfg) == "bf16"
    if not isinstance(value, bool):
        raise InputError(f"finetune.padding_free must be true, false or auto, got {value!r}")
    return value


def keyed_finetune(cfg: dict[str, Any]) -> dict[str, Any]:
    """A ``finetune`` config as its cache key sees it: ``precision`` resolved and kept only when it is ``bf16``,
    ``padding_free`` kept (as true) only when it is on; a config without either keys as it did before they existed."""
    out = {k: v for k, v in cfg.items() if k not in ("precision", "padding_free")}
    if finetune_precision(cfg) != "fp32":
        out["precision"] = finetune_precision(cfg)
    if padding_free(cfg):
        out["padding_free"] = True
    return out


def keyed_precision(node: dict[str, Any], where: str) -> dict[str, Any]:
    """``node`` with its ``precision`` resolved and kept only when it is ``bf16`` (``where``: its config path)."""
    out = {k: v for k, v in node.items() if k != "precision"}
    resolved = resolve_precision(node.get("precision"), where=where)
    return out if resolved == "fp32" else out | {"precision": resolved}


def check_precision_config(cfg: dict[str, Any]) -> None:
    """``finetune.precision`` and ``finetune.padding_free`` resolve, and bf16 does not meet a conflicting trainer
    flag (``args.fp16``); called before any work."""
    precision = finetune_precision(cfg)
    padding_free(cfg)
    if precision == "bf16" and (cfg.get("args") or {}).get("fp16"):
        raise InputError("finetune.precision resolves to bf16 but finetune.args.fp16 is true; set one of them")
    if precision == "bf16" and (cfg.get("args") or {}).get("use_cpu") and not this_cpu_has_bf16():
        log.warning("finetune.precision=bf16 on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16 flag): "
                    "it is emulated and several times slower than float32; precision=auto picks fp32 here")
