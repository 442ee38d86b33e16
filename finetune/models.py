"""The one model-loading helper: loads tokenizers and causal LMs (with PEFT adapters) from a resolved checkpoint.

Model specs (``packaged:smollm2``, ``packaged:minilm``, hub ids, directories) are resolved by
``divcore.models.resolve_model``, re-exported here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from divcore.errors import InputError
from divcore.models import SMOLLM2_GGUF, resolve_model  # noqa: F401  (the model helpers' public names)

log = logging.getLogger(__name__)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def finetuned(output_dir: str | Path, base_model: str) -> tuple[str, str | None]:
    """(model path, adapter path) of a fine-tuning output: a LoRA adapter over the base, or a full model."""
    if (Path(output_dir) / "adapter_config.json").exists():
        return base_model, str(output_dir)
    if (Path(output_dir) / "config.json").exists():
        return str(output_dir), None
    raise InputError(f"{output_dir} holds neither a PEFT adapter nor a model: the fine-tuning output is incomplete")


def load_causal_lm(path: str, *, dtype: str = "float32", device: str = "cpu", adapter: str | None = None,
                   merge_dtype: str | None = None) -> PreTrainedModel:
    """A causal LM in eval mode, with a PEFT adapter merged in when ``adapter`` is given.

    ``merge_dtype``: the dtype the base is loaded and the adapter merged in before the model is cast to ``dtype``
    (default: ``dtype`` itself). ``merge_dtype="float32"`` with ``dtype="bfloat16"`` rounds the merged weights to
    bfloat16 once, instead of adding the small LoRA delta to weights already rounded (finetune.precision)."""
    load = merge_dtype if adapter and merge_dtype else dtype
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, load))
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if load != dtype:
        model = model.to(getattr(torch, dtype))
    return model.to(device).eval()


def release_gpu_memory(*owners: object) -> None:
    """Drop the last references to models/engines and return their cached GPU memory to the driver, so the next
    GPU stage in this process (vLLM refuses to start while memory it expects is held) finds it free. vLLM engines
    are shut down first (their worker holds the weights and KV cache outside Python's reference counting)."""
    import gc

    for owner in owners:
        core = getattr(getattr(owner, "llm_engine", None), "engine_core", None)  # vLLM's engine-core client
        if core is not None:
            core.shutdown()
    del owners
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
