"""Judges for AlpacaEval and MT-Bench: an OpenAI-compatible endpoint, or a local transformers model.

Both answer ``chat(messages, max_tokens=..., temperature=..., top_logprobs=...)`` with an OpenAI-style choice dict
(``text``, and ``logprobs.content[0].top_logprobs`` when asked), which is what alpaca_eval's parsers read. The
endpoint judge is a thin layer over the ``openai`` client (``base_url`` reaches OpenAI, ``vllm serve``, or any
compatible server). Its retry loop is our own rather than the client's or alpaca_eval's because a fault must
surface as an error after the last attempt: alpaca_eval's decoder turns exhausted retries into empty completions,
which would be scored as missing or lost comparisons.

API keys never enter a config: a judge config names the environment variable that holds the key
(``api_key_env``), so Hydra's dumped config, W&B's run config and the logs only ever see the variable's name.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

from metrics.validation import InputError

log = logging.getLogger(__name__)

KINDS = ("openai", "local")


class JudgeError(RuntimeError):
    """The judge failed after every retry; no score is recorded for the item."""


@dataclass(frozen=True)
class JudgeConfig:
    kind: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    smoke_test: bool = False
    device: str = "cpu"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> JudgeConfig:
        cfg = dict(cfg)
        for secret in ("api_key", "key", "token"):
            if secret in cfg:
                raise InputError(f"eval.judge.{secret}: never put an API key in a config (Hydra and W&B store "
                                 "configs); export it and name the variable in eval.judge.api_key_env")
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"eval.judge: unknown field(s) {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        if cfg.get("kind") not in KINDS:
            raise InputError(f"eval.judge.kind must be one of {KINDS}, got {cfg.get('kind')!r}")
        if not cfg.get("model"):
            raise InputError("eval.judge.model is empty: name the judge model (an endpoint's model id, or a "
                             "local checkpoint / packaged:smollm2 for kind=local)")
        judge = cls(**cfg)
        if judge.kind == "openai":
            judge.check_endpoint()
        return judge

    def check_endpoint(self) -> None:
        if not self.base_url:
            raise InputError("eval.judge.base_url is empty: give the OpenAI-compatible endpoint, e.g. "
                             "https://api.openai.com/v1 or http://localhost:8000/v1 for `vllm serve`")
        if not self.api_key_env:
            raise InputError("eval.judge.api_key_env is empty: name the environment variable holding the "
                             "endpoint's API key (e.g. OPENAI_API_KEY; any non-empty value for a keyless vLLM)")
        if not os.environ.get(self.api_key_env):
            raise InputError(f"environment variable {self.api_key_env} (eval.judge.api_key_env) is not set: "
                             f"export {self.api_key_env}=<key> before running")

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two judges the same judge: the annotation caches are keyed by it (never by the key)."""
        return {"kind": self.kind, "model": self.model, "base_url": self.base_url}

    @property
    def label(self) -> str:
        name = f"{self.model} ({'local' if self.kind == 'local' else self.base_url})"
        return f"{name} [smoke-test judge, not a valid benchmark number]" if self.smoke_test else name


class Judge(Protocol):
    config: JudgeConfig

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             top_logprobs: int | None = None, prefill: str = "") -> dict[str, Any]: ...


class EndpointJudge:
    """A judge behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, config: JudgeConfig) -> None:
        import openai

        config.check_endpoint()
        self.config = config
        self._openai = openai
        self.client = openai.OpenAI(base_url=config.base_url, api_key=os.environ[config.api_key_env],
                                    timeout=config.timeout_s, max_retries=0)

    def _once(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> dict[str, Any]:
        resp = self.client.chat.completions.create(model=self.config.model, messages=messages, **kwargs)
        if not getattr(resp, "choices", None):
            raise JudgeError("reply has no choices")
        choice = resp.choices[0].model_dump()
        text = (choice.get("message") or {}).get("content")
        if not isinstance(text, str):
            raise JudgeError("reply has no message content")
        if kwargs.get("logprobs") and not ((choice.get("logprobs") or {}).get("content")):
            raise JudgeError("reply has no logprobs although they were requested")
        choice["text"] = text
        return choice

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             top_logprobs: int | None = None, prefill: str = "") -> dict[str, Any]:
        if prefill:
            raise InputError("a reply prefill is only possible with a local judge (kind=local); chat endpoints "
                             "do not continue a partial reply: unset the prefill for this judge")
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if top_logprobs:
            kwargs |= {"logprobs": True, "top_logprobs": top_logprobs}
        retryable = (self._openai.APITimeoutError, self._openai.APIConnectionError,
                     self._openai.InternalServerError, self._openai.RateLimitError,
                     self._openai.APIResponseValidationError, JudgeError, ValueError)
        last: BaseException | None = None
        for attempt in range(1, self.config.max_retries + 1):
            try:
                return self._once(messages, kwargs)
            except retryable as e:
                last = e
                log.warning("judge %s attempt %d/%d failed: %s: %s", self.config.model, attempt,
                            self.config.max_retries, type(e).__name__, e)
                if attempt < self.config.max_retries:
                    time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
        raise JudgeError(f"judge {self.config.model} at {self.config.base_url} failed {self.config.max_retries} "
                         f"times; last error {type(last).__name__}: {last}. Nothing was scored for this item; "
                         "re-run to retry (finished annotations are cached)") from last


class LocalJudge:
    """A transformers model as judge: greedy replies, and next-token log-probabilities on request.

    ``prefill`` starts the reply (e.g. ``"Rating: [["``) so that a tiny smoke-test model answers in the expected
    format; callers key their caches on it.
    """

    def __init__(self, config: JudgeConfig, model_path: str) -> None:
        from finetune.models import load_causal_lm, load_tokenizer

        self.config = config
        self.tok = load_tokenizer(model_path)
        self.model = load_causal_lm(model_path, device=config.device)

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             top_logprobs: int | None = None, prefill: str = "") -> dict[str, Any]:
        import torch

        prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tok(prompt + prefill, return_tensors="pt",
                       add_special_tokens=False).input_ids.to(self.config.device)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=max_tokens, output_scores=bool(top_logprobs),
                                      return_dict_in_generate=True, pad_token_id=self.tok.pad_token_id)
        text = prefill + self.tok.decode(out.sequences[0, ids.shape[1]:],
                                                             skip_special_tokens=True)
        choice: dict[str, Any] = {"text": text, "message": {"role": "assistant", "content": text}}
        if top_logprobs:
            logp = torch.log_softmax(out.scores[0][0].float(), dim=-1)
            values, index = logp.topk(top_logprobs)
            top = [{"token": self.tok.decode([int(i)]), "logprob": float(v)} for v, i in zip(values, index, strict=True)
                   if math.isfinite(float(v))]
            choice["logprobs"] = {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"],
                                               "top_logprobs": top}]}
        return choice


def make_judge(cfg: dict[str, Any] | JudgeConfig, cache_dir: str) -> Judge:
    config = cfg if isinstance(cfg, JudgeConfig) else JudgeConfig.from_dict(cfg)
    if config.kind == "openai":
        return EndpointJudge(config)
    from finetune.models import resolve_model

    return LocalJudge(config, resolve_model(config.model, cache_dir))
