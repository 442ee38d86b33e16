"""``eval.precision`` (``auto`` | ``bf16`` | ``fp32``, :mod:`finetune.precision`): the dtype of the model under
evaluation in the reference NLL and the transformers generator (vLLM keeps ``eval.generation.dtype``).

In bf16 the base is loaded in bfloat16 with the float32 adapter left unmerged (the model a bf16 fine-tune
trained); the log-probabilities are taken in float32. ``fp32`` (or absent) is the evaluation as before this setting
existed. The shipped scoring configs say ``fp32``, not ``auto``: on the numerics check of
``benchmarks/bench_cpu_training.py --numerics`` bf16 *training* moved the score by 0.2 training-seed SDs, bf16
*scoring* by 6.3 (and the training gain over the untuned model by 40%), so a bf16 CPU trains in bf16 and scores in
float32 unless ``eval.precision=bf16`` (or ``auto``) asks otherwise.
"""

from __future__ import annotations

from typing import Any

from finetune.precision import TORCH_DTYPES, keyed_finetune, keyed_precision, resolve_precision


def eval_precision(cfg: dict[str, Any]) -> str:
    """The resolved ``eval.precision`` of an ``eval`` config: ``bf16`` or ``fp32``."""
    return resolve_precision(cfg.get("precision"), where="eval.precision")


def eval_dtype(cfg: dict[str, Any], configured: str = "float32") -> str:
    """The torch dtype name the model under evaluation is loaded in: bfloat16 when ``eval.precision`` resolves to
    bf16, else the ``configured`` one (``eval.generation.dtype``; float32 for the reference NLL)."""
    precision = eval_precision(cfg)
    return TORCH_DTYPES[precision] if precision != "fp32" else configured


def keyed_precisions(cfg: dict[str, Any]) -> dict[str, Any]:
    """The study config with ``finetune.precision`` / ``finetune.padding_free`` / ``eval.precision`` as the cache
    keys see them: resolved, and present only where they differ from the float32 path (whose keys are those of
    every artifact built before the settings existed)."""
    out = dict(cfg)
    if isinstance(cfg.get("finetune"), dict):
        out["finetune"] = keyed_finetune(cfg["finetune"])
    if isinstance(cfg.get("eval"), dict):
        out["eval"] = keyed_precision(cfg["eval"], "eval.precision")
    return out
