"""The one model-loading helper: loads tokenizers and causal LMs (with PEFT adapters) from a resolved checkpoint.

Model specs (``packaged:smollm2``, ``packaged:minilm``, hub ids, directories) are resolved by
``divcore.models.resolve_model``, re-exported here.

**Setup paid once.** A study runs many fine-tunes and evaluations in one process, most of them on one base model;
:data:`MODELS` keeps what they load on the CPU (a few models, least recently used first out) so that it is loaded
once: a model is shared, so callers treat it as read-only (inference), and a fine-tune borrows its base with
:meth:`ModelCache.lend`, which takes the LoRA layers out again afterwards. Every cached object is keyed by the files
it was read from (path, size, modification time), so a rewritten checkpoint or adapter is read again. Tokenizers
are cached and handed out as copies (callers set chat templates and padding sides on them). A GPU model is never
cached: the next GPU stage (vLLM) needs its memory.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from divcore.errors import InputError
from divcore.models import SMOLLM2_GGUF, resolve_model  # noqa: F401  (the model helpers' public names)

log = logging.getLogger(__name__)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt")
CACHE_MAX_BYTES = 4 << 30  # CPU models kept at once (a 135M float32 model: 0.54 GB)
TOKENIZERS_KEPT = 8


def files_stamp(path: str | None) -> tuple:
    """What identifies a checkpoint or adapter folder's content cheaply: its files' names, sizes and mtimes (a hub
    id, which is no folder, stamps as itself)."""
    if path is None:
        return ()
    folder = Path(path)
    if not folder.is_dir():
        return (str(path),)
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
                        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)))


def _model_bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


class ModelCache:
    """The causal LMs and tokenizers this process has loaded on the CPU, by (what was asked, files it came from)."""

    def __init__(self, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.enabled = True
        self.loads = 0  # models built (not served from the cache): what the reuse tests and benchmarks count
        self._models: OrderedDict[tuple, PreTrainedModel] = OrderedDict()
        self._tokenizers: OrderedDict[tuple, PreTrainedTokenizerBase] = OrderedDict()

    def model(self, key: tuple, build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
        """The cached model under ``key``, built by ``build`` on first use (least recently used ones leave first)."""
        if not self.enabled:
            self.loads += 1
            return build()
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = build()
        self.loads += 1
        self._models[key] = model
        while len(self._models) > 1 and sum(_model_bytes(m) for m in self._models.values()) > self.max_bytes:
            self._models.popitem(last=False)
        return model

    def tokenizer(self, path: str, build: Callable[[], PreTrainedTokenizerBase]) -> PreTrainedTokenizerBase:
        """A copy of the cached tokenizer of ``path`` (callers change templates and padding sides)."""
        if not self.enabled:
            return build()
        key = (path, files_stamp(path))
        if key not in self._tokenizers:
            self._tokenizers[key] = build()
            while len(self._tokenizers) > TOKENIZERS_KEPT:
                self._tokenizers.popitem(last=False)
        self._tokenizers.move_to_end(key)
        return copy.deepcopy(self._tokenizers[key])

    @contextmanager
    def lend(self, path: str, dtype: str) -> Iterator[PreTrainedModel]:
        """The cached base model of ``path`` for a LoRA fine-tune: PEFT injects its layers into it, and on the way
        out every LoRA layer is replaced by the layer it wrapped, and TRL's patched ``forward`` is dropped, so the
        next borrower (or evaluation) gets the base model as loaded. A fine-tune that fails leaves it out of the
        cache."""
        key = base_key(path, dtype)
        model = self.model(key, lambda: _from_pretrained(path, dtype))
        configs = copy.deepcopy(model.config), copy.deepcopy(model.generation_config)  # TRL sets the pad token there
        try:
            yield model
            _strip_adapters(model)
            for live, saved in zip((model.config, model.generation_config), configs, strict=True):
                vars(live).clear()  # in place: the model's submodules hold the same config object
                vars(live).update(vars(saved))
        except BaseException:
            self._models.pop(key, None)
            raise

    def clear(self) -> None:
        self._models.clear()
        self._tokenizers.clear()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Every load in the block is a fresh one (the reuse tests' reference)."""
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled


MODELS = ModelCache()


def base_key(path: str, dtype: str) -> tuple:
    """The cache key of a base model as loaded: the one copy a fine-tune borrows and an evaluation reads."""
    return ("base", path, dtype, files_stamp(path))


def _from_pretrained(path: str, dtype: str) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()


def _strip_adapters(model: PreTrainedModel) -> None:
    """Check that a borrowed base model is back as loaded after a PEFT fine-tune (its LoRA layers taken out by
    ``PeftModel.unload``, unmerged: the base weights were frozen) and drop TRL's ``forward`` patch (an instance
    attribute: the fused LM head); a PEFT module still in it (a ``modules_to_save`` copy, a merged layer) is an
    error, which takes the model out of the cache."""
    left = sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("peft.")})
    if left:
        raise RuntimeError(f"the fine-tune left PEFT modules {left} in the shared base model")
    model.__dict__.pop("forward", None)
    model.eval()


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of ``path`` (pad token = EOS where it has none); a copy of the process's cached one."""
    def build() -> PreTrainedTokenizerBase:
        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    return MODELS.tokenizer(path, build)


def finetuned(output_dir: str | Path, base_model: str) -> tuple[str, str | None]:
    """(model path, adapter path) of a fine-tuning output: a LoRA adapter over the base, or a full model."""
    if (Path(output_dir) / "adapter_config.json").exists():
        return base_model, str(output_dir)
    if (Path(output_dir) / "config.json").exists():
        return str(output_dir), None
    raise InputError(f"{output_dir} holds neither a PEFT adapter nor a model: the fine-tuning output is incomplete")


def load_causal_lm(path: str, *, dtype: str = "float32", device: str = "cpu", adapter: str | None = None,
                   merge: bool = True) -> PreTrainedModel:
    """A causal LM in eval mode, with a PEFT adapter merged in when ``adapter`` is given; on the CPU it comes from
    :data:`MODELS`, shared: use it for inference only.

    ``merge=False`` keeps the adapter as PEFT loads it, unmerged and in float32 over a ``dtype`` base: the model the
    bf16 fine-tune trained (finetune.precision says what the numerics check measured for merged and unmerged)."""
    def build() -> PreTrainedModel:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        if adapter:
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, adapter)
            model = model.merge_and_unload() if merge else model
        return model.to(device).eval()

    if not str(device).startswith("cpu"):
        return build()
    if adapter is None:  # the base model as a fine-tune borrows it (ModelCache.lend): one copy for both
        return MODELS.model(base_key(path, dtype), build)
    return MODELS.model(("adapted", path, files_stamp(path), adapter, files_stamp(adapter), dtype, merge), build)


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
