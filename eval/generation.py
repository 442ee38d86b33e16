"""Answer generation for the judged benchmarks: one interface, a transformers backend (CPU or one GPU) and a
vLLM backend (GPU, batched, LoRA adapters served without merging).

``generate(conversations, temperatures, max_new_tokens)`` takes chat messages and a temperature per conversation;
0 means greedy. Sampling is seeded from config, so the same config gives the same answers.

Both backends render prompts the same way, with :func:`render_prompts`: the chat template of the tokenizer saved
with the fine-tuned adapter or model (``finetune.sft.train_sft`` saves the template it trained with), so the
generator sees exactly the training format; vLLM gets the rendered token ids, never its own template choice (the
base model's, which LLaMA-3-8B lacks and Qwen2.5's differs from the ChatML used in training). ``close()`` frees the
model and its GPU memory before the next GPU stage.

A backend is a small factory registered here with :func:`register_backend` under its
``eval.generation.backend`` name, with the ``eval.generation.*`` keys it reads and their constraints;
:func:`check_generation_config` checks them before any model loads.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from divcore.errors import InputError
from divcore.params import NON_NEGATIVE, POSITIVE_INT, SEED, Param, flag, mapping, number, optional
from divcore.params import text as non_empty_text
from divcore.registry import Registry
from finetune.precision import TORCH_DTYPES

log = logging.getLogger(__name__)

# FastChat's llm_judge/common.py temperature_config: MT-Bench samples creative categories, decodes the rest greedily.
MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}

Messages = list[dict[str, str]]


class Generator(Protocol):
    def generate(self, conversations: list[Messages], temperatures: list[float],
                 max_new_tokens: int) -> list[str]: ...


@dataclass(frozen=True)
class GenerationBackend:
    """An ``eval.generation.backend``: ``fn(cfg, model_path, adapter)`` builds its :class:`Generator` from the
    generation config; ``params``: the ``eval.generation.*`` keys it reads (dotted for nested ones)."""

    name: str
    fn: Callable[[Mapping[str, Any], str, str | None], Generator]
    params: dict[str, Param]


GENERATION_BACKENDS: Registry[GenerationBackend] = Registry("eval.generation.backend")
# Read for every backend by make_generator itself.
COMMON_PARAMS: dict[str, Param] = {"temperature": optional(NON_NEGATIVE), "seed": SEED, "dtype": non_empty_text()}


def register_backend(name: str, *, params: Mapping[str, Param]) -> Callable:
    """Register ``fn(cfg, model_path, adapter) -> Generator`` as ``eval.generation.backend=name``."""
    def wrap(fn: Callable[[Mapping[str, Any], str, str | None], Generator]) -> Callable:
        GENERATION_BACKENDS.add(name, GenerationBackend(name, fn, COMMON_PARAMS | dict(params)))
        return fn
    return wrap


def check_generation_config(cfg: Mapping[str, Any]) -> GenerationBackend:
    """The backend ``cfg`` (the generation config) names, once its options pass their constraints."""
    return GENERATION_BACKENDS.check_config(cfg.get("backend", "transformers"), cfg, "eval.generation")


# The LoRA ranks vLLM 0.32 accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def load_chat_tokenizer(model_path: str, adapter: str | None = None) -> Any:
    """The tokenizer saved with the adapter (or the model), which must carry a chat template."""
    from finetune.models import load_tokenizer

    source = adapter or model_path
    tok = load_tokenizer(source)
    if tok.chat_template is None:
        raise InputError(f"{source} has no chat template (a base model?), so prompts cannot be rendered as in "
                         "training: evaluate a fine-tuned model (its template is saved with it), or set "
                         "finetune.chat_template (llama3, chatml or a Jinja string) and fine-tune")
    return tok


def render_prompts(tok: Any, conversations: list[Messages]) -> list[str]:
    """Each conversation rendered by ``tok``'s chat template, ending with the assistant's generation prompt."""
    return [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]


def adapter_rank(adapter: str) -> int:
    """The largest LoRA rank in a PEFT adapter (``r`` and any per-module ``rank_pattern``)."""
    import json
    from pathlib import Path

    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])


def lora_rank_limit(adapter: str, configured: int | None) -> int:
    """``max_lora_rank`` for vLLM: the smallest rank it accepts that holds the adapter, or the configured one."""
    rank = adapter_rank(adapter)
    if configured is not None:
        if rank > int(configured):
            raise InputError(f"the adapter {adapter} has LoRA rank {rank}, above eval.generation.vllm.max_lora_rank="
                             f"{configured}: raise it to >= {rank} or remove it (it is then read from the adapter)")
        return int(configured)
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise InputError(f"the adapter {adapter} has LoRA rank {rank}; vLLM serves ranks up to "
                         f"{VLLM_LORA_RANKS[-1]}: use eval.generation.backend=transformers (merges the adapter)")
    return fitting[0]


def _by_temperature(temperatures: list[float]) -> dict[float, list[int]]:
    groups: dict[float, list[int]] = defaultdict(list)
    for i, t in enumerate(temperatures):
        if t < 0:
            raise InputError(f"temperature {t} for item {i} is negative")
        groups[float(t)].append(i)
    return groups


class TransformersGenerator:
    """Batched ``model.generate`` with left padding; the adapter (if any) is merged at load."""

    def __init__(self, model_path: str, *, adapter: str | None = None, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 8, seed: int = 0, merge: bool = True) -> None:
        from finetune.models import load_causal_lm

        self.tok = load_chat_tokenizer(model_path, adapter)
        self.tok.padding_side = "left"
        self.model = load_causal_lm(model_path, adapter=adapter, device=device, dtype=dtype, merge=merge)
        self.device, self.batch_size, self.seed = device, batch_size, seed

    def _batch(self, conversations: list[Messages], temperature: float, max_new_tokens: int) -> list[str]:
        import torch

        prompts = render_prompts(self.tok, conversations)
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature > 0 else \
            {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=self.tok.pad_token_id,
                                      eos_token_id=self.tok.eos_token_id, **sampling)
        return [self.tok.decode(row[enc.input_ids.shape[1]:], skip_special_tokens=True).strip() for row in out]

    def generate(self, conversations: list[Messages], temperatures: list[float],
                 max_new_tokens: int) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        answers: list[str] = [""] * len(conversations)
        for temperature, idx in _by_temperature(temperatures).items():
            torch.manual_seed(self.seed)  # each temperature group draws from the same seeded stream
            for start in tqdm(range(0, len(idx), self.batch_size), desc=f"generate (T={temperature})"):
                chunk = idx[start:start + self.batch_size]
                for i, text in zip(chunk, self._batch([conversations[i] for i in chunk], temperature,
                                                      max_new_tokens), strict=True):
                    answers[i] = text
        return answers

    def close(self) -> None:
        from finetune.models import release_gpu_memory

        self.model = None
        release_gpu_memory()


@register_backend("transformers", params={"device": non_empty_text(), "batch_size": POSITIVE_INT})
def _transformers(cfg: Mapping[str, Any], model_path: str, adapter: str | None) -> Generator:
    # eval.precision=bf16 (eval.evaluators passes it in as ``precision``): bfloat16 base, float32 adapter unmerged
    bf16 = cfg.get("precision") == "bf16"
    return TransformersGenerator(model_path, adapter=adapter, device=cfg.get("device", "cpu"),
                                 dtype=TORCH_DTYPES["bf16"] if bf16 else cfg.get("dtype", "float32"),
                                 batch_size=int(cfg.get("batch_size", 8)), seed=int(cfg.get("seed", 0)),
                                 merge=not bf16)


class VLLMGenerator:
    """vLLM's offline ``LLM.generate`` on prompts rendered by :func:`render_prompts`; a LoRA adapter is applied
    per request instead of merged, with ``max_lora_rank`` read from the adapter."""

    def __init__(self, model_path: str, *, adapter: str | None = None, seed: int = 0, dtype: str = "bfloat16",
                 **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
        except ImportError as e:
            raise InputError("eval.generation.backend=vllm needs vLLM 0.32.x: pip install -e '.[gpu]'") from e
        self.tok = load_chat_tokenizer(model_path, adapter)
        if adapter is not None:
            llm_kwargs = llm_kwargs | {"enable_lora": True,
                                       "max_lora_rank": lora_rank_limit(adapter, llm_kwargs.get("max_lora_rank"))}
        self.llm = LLM(model=model_path, tokenizer=adapter or model_path, seed=seed, dtype=dtype, **llm_kwargs)
        self.adapter, self.seed = adapter, seed

    def generate(self, conversations: list[Messages], temperatures: list[float],
                 max_new_tokens: int) -> list[str]:
        from vllm import SamplingParams

        lora = None
        if self.adapter:
            from vllm.lora.request import LoRARequest
            lora = LoRARequest("subset", 1, self.adapter)
        prompts = self.prompts(conversations)
        answers: list[str] = [""] * len(conversations)
        for temperature, idx in _by_temperature(temperatures).items():
            # Stop at the template's end of turn (saved as EOS with the fine-tuned tokenizer).
            params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=self.seed,
                                    stop_token_ids=[self.tok.eos_token_id], skip_special_tokens=True)
            outs = self.llm.generate([prompts[i] for i in idx], params, lora_request=lora, use_tqdm=True)
            for i, out in zip(idx, outs, strict=True):
                answers[i] = out.outputs[0].text.strip()
        return answers

    def prompts(self, conversations: list[Messages]) -> list[dict[str, list[int]]]:
        """The token-id prompts vLLM is given: the rendered text tokenised without extra special tokens, as the
        training text was (the template itself writes BOS where it wants one)."""
        return [{"prompt_token_ids": self.tok(p, add_special_tokens=False)["input_ids"]}
                for p in render_prompts(self.tok, conversations)]

    def close(self) -> None:
        """Shut the engine down so the next GPU stage (or the next subset's generator) finds the memory free."""
        from finetune.models import release_gpu_memory

        release_gpu_memory(self.llm)
        self.llm = None


# Extra vllm.LLM arguments; the ones the configs set are checked, others pass through to vLLM.
VLLM_PARAMS: dict[str, Param] = {
    "vllm": optional(mapping()), "vllm.max_model_len": POSITIVE_INT, "vllm.max_lora_rank": optional(POSITIVE_INT),
    "vllm.gpu_memory_utilization": number(0, 1, lo_open=True), "vllm.enforce_eager": flag()}


@register_backend("vllm", params=VLLM_PARAMS)
def _vllm(cfg: Mapping[str, Any], model_path: str, adapter: str | None) -> Generator:
    return VLLMGenerator(model_path, adapter=adapter, seed=int(cfg.get("seed", 0)), dtype=cfg.get("dtype", "bfloat16"),
                         **dict(cfg.get("vllm") or {}))


class FixedTemperature:
    """Every prompt at one temperature, whatever the benchmark asks (``eval.generation.temperature``: ablations,
    or sampling from an untrained test model whose greedy answer is blank)."""

    def __init__(self, inner: Generator, temperature: float) -> None:
        self.inner, self.temperature = inner, temperature

    def generate(self, conversations: list[Messages], temperatures: list[float],
                 max_new_tokens: int) -> list[str]:
        return self.inner.generate(conversations, [self.temperature] * len(conversations), max_new_tokens)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def make_generator(cfg: Mapping[str, Any], model_path: str, adapter: str | None) -> Generator:
    """The generator ``cfg`` (``eval.generation``) describes; its options are checked before the model loads."""
    generator = check_generation_config(cfg).fn(cfg, model_path, adapter)
    if cfg.get("temperature") is not None:
        log.warning("eval.generation.temperature=%s overrides every benchmark's decoding temperature",
                    cfg["temperature"])
        return FixedTemperature(generator, float(cfg["temperature"]))
    return generator

