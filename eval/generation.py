"""Answer generation for the judged benchmarks: one interface, a transformers backend (CPU or one GPU) and a
vLLM backend (GPU, batched, LoRA adapters served without merging).

``generate(conversations, temperatures, max_new_tokens)`` takes chat messages (the model's own chat template is
applied) and a temperature per conversation; 0 means greedy. Sampling is seeded from config, so the same config
gives the same answers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Protocol

from metrics.validation import InputError

log = logging.getLogger(__name__)

# FastChat's llm_judge/common.py temperature_config: MT-Bench samples creative categories, decodes the rest greedily.
MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}

Messages = list[dict[str, str]]


class Generator(Protocol):
    def generate(self, conversations: list[Messages], temperatures: list[float],
                 max_new_tokens: int) -> list[str]: ...


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
                 batch_size: int = 8, seed: int = 0) -> None:
        from finetune.models import load_causal_lm, load_tokenizer

        self.tok = load_tokenizer(adapter or model_path)
        self.tok.padding_side = "left"
        self.model = load_causal_lm(model_path, adapter=adapter, device=device, dtype=dtype)
        self.device, self.batch_size, self.seed = device, batch_size, seed

    def _batch(self, conversations: list[Messages], temperature: float, max_new_tokens: int) -> list[str]:
        import torch

        prompts = [self.tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
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


class VLLMGenerator:
    """vLLM's offline ``LLM.chat``; a LoRA adapter is applied per request instead of merged."""

    def __init__(self, model_path: str, *, adapter: str | None = None, seed: int = 0, dtype: str = "bfloat16",
                 **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
        except ImportError as e:
            raise InputError("eval.generation.backend=vllm needs the GPU extra: pip install -e '.[gpu]'") from e
        self.llm = LLM(model=model_path, seed=seed, dtype=dtype, enable_lora=adapter is not None, **llm_kwargs)
        self.adapter, self.seed = adapter, seed

    def generate(self, conversations: list[Messages], temperatures: list[float],
                 max_new_tokens: int) -> list[str]:
        from vllm import SamplingParams

        lora = None
        if self.adapter:
            from vllm.lora.request import LoRARequest
            lora = LoRARequest("subset", 1, self.adapter)
        answers: list[str] = [""] * len(conversations)
        for temperature, idx in _by_temperature(temperatures).items():
            params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=self.seed)
            outs = self.llm.chat([conversations[i] for i in idx], params, lora_request=lora, use_tqdm=True)
            for i, out in zip(idx, outs, strict=True):
                answers[i] = out.outputs[0].text.strip()
        return answers


class FixedTemperature:
    """Every prompt at one temperature, whatever the benchmark asks (``eval.generation.temperature``: ablations,
    or sampling from an untrained test model whose greedy answer is blank)."""

    def __init__(self, inner: Generator, temperature: float) -> None:
        self.inner, self.temperature = inner, temperature

    def generate(self, conversations: list[Messages], temperatures: list[float],
                 max_new_tokens: int) -> list[str]:
        return self.inner.generate(conversations, [self.temperature] * len(conversations), max_new_tokens)


def make_generator(cfg: dict[str, Any], model_path: str, adapter: str | None) -> Generator:
    generator = _backend(cfg, model_path, adapter)
    if cfg.get("temperature") is not None:
        log.warning("eval.generation.temperature=%s overrides every benchmark's decoding temperature",
                    cfg["temperature"])
        return FixedTemperature(generator, float(cfg["temperature"]))
    return generator


def _backend(cfg: dict[str, Any], model_path: str, adapter: str | None) -> Generator:
    backend = cfg.get("backend", "transformers")
    if backend == "transformers":
        return TransformersGenerator(model_path, adapter=adapter, device=cfg.get("device", "cpu"),
                                     dtype=cfg.get("dtype", "float32"), batch_size=int(cfg.get("batch_size", 8)),
                                     seed=int(cfg.get("seed", 0)))
    if backend == "vllm":
        return VLLMGenerator(model_path, adapter=adapter, seed=int(cfg.get("seed", 0)),
                             dtype=cfg.get("dtype", "bfloat16"), **dict(cfg.get("vllm") or {}))
    raise InputError(f"eval.generation.backend must be 'transformers' or 'vllm', got {backend!r}")
