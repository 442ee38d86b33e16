"""Judges for AlpacaEval and MT-Bench: an OpenAI-compatible endpoint, or a local transformers model.

Both answer ``chat(messages, max_tokens=..., temperature=..., top_logprobs=...)`` with an OpenAI-style choice dict
(``text``, ``usage`` with prompt and completion tokens, and ``logprobs.content[0].top_logprobs`` when asked), which
is what alpaca_eval's parsers read. The endpoint judge is a thin layer over the ``openai`` client (``base_url``
reaches OpenAI, ``vllm serve``, or any compatible server).

Faults are handled in two layers. Transport faults (timeouts, connection errors, 408/409/429/5xx) are retried by
the ``openai`` client itself, which waits as the server's ``Retry-After`` says; a request refused for good (400,
401, 403, 404, 422: unknown model, unsupported parameter, bad key) is a :class:`JudgeError` at once, naming the
model and the fix. Our own loop only retries content faults (a reply without choices, content or the requested
logprobs, or one that is not JSON): a fault must surface as an error after the last attempt, because alpaca_eval's
decoder would turn exhausted retries into empty completions, scored as missing or lost comparisons.

Many prompts are judged at once with :func:`judge_many` on ``concurrency`` threads (HTTP judges; a local model
answers one prompt at a time); results come back in input order, so they do not depend on completion order.

API keys never enter a config: a judge config names the environment variable that holds the key
(``api_key_env``), so Hydra's dumped config, W&B's run config and the logs only ever see the variable's name.
A judge config may carry a ``price`` (USD per million input / output tokens), from which every judgment's cost is
computed.

A judge kind (``eval.judge.kind``) is a small factory registered here with :func:`register_kind`: its name, the
``eval.judge.*`` fields it reads with their constraints, its default concurrency, whether it runs in-process, and
any check of its own (an endpoint's URL and key). :meth:`JudgeConfig.from_dict` checks all of it before any work.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from divcore.errors import InputError
from divcore.locks import hold_lock
from divcore.params import NON_NEGATIVE, POSITIVE_INT, Param, flag, integer, number, optional, text
from divcore.registry import Registry

log = logging.getLogger(__name__)

PRICE_KEYS = ("input_usd_per_mtok", "output_usd_per_mtok")
REFUSALS = {400: "the endpoint rejected the request (unsupported parameter? e.g. logprobs, which alpaca_eval's "
                 "weighted annotator needs: choose a judge that returns logprobs)",
            401: "the API key was refused: check the key in the environment variable {key_env}",
            403: "the key has no access to this model: check the account's model permissions",
            404: "the endpoint does not serve this model: set eval.judge.model to a model it serves (OpenAI "
                 "retired gpt-4-1106-preview; e.g. eval/judge=openai_gpt41)",
            422: "the endpoint could not process the request: check eval.judge.model and the decoding settings"}


@dataclass(frozen=True)
class JudgeKind:
    """An ``eval.judge.kind``. ``fn(config, cache_dir) -> Judge`` builds the judge; ``params``: the
    ``eval.judge.*`` fields it reads, with their constraints; ``in_process``: a model in this process (one
    prompt at a time, no bill without a price, a reply prefill possible); ``check(config, check_key)``: the
    kind's own checks before any work."""

    name: str
    fn: Callable[[JudgeConfig, str], Judge]
    params: dict[str, Param]
    default_concurrency: int
    in_process: bool = False
    check: Callable[[JudgeConfig, bool], None] | None = None


JUDGE_KINDS: Registry[JudgeKind] = Registry("eval.judge.kind")


def register_kind(name: str, *, params: Mapping[str, Param], default_concurrency: int, in_process: bool = False,
                  check: Callable[[JudgeConfig, bool], None] | None = None) -> Callable:
    """Register ``fn(config, cache_dir) -> Judge`` as ``eval.judge.kind=name``; ``params`` adds to the fields every
    kind reads (:data:`COMMON_FIELDS`)."""
    def wrap(fn: Callable[[JudgeConfig, str], Judge]) -> Callable[[JudgeConfig, str], Judge]:
        JUDGE_KINDS.add(name, JudgeKind(name, fn, COMMON_FIELDS | dict(params), default_concurrency, in_process,
                                        check))
        return fn
    return wrap


class JudgeError(RuntimeError):
    """The judge failed after every retry, or refused the request; no score is recorded for the item."""


@dataclass(frozen=True)
class JudgeConfig:
    kind: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    # worst case of one request: timeout_s x max_retries plus the backoffs (worst_case_s); the shipped configs keep
    # it within minutes (120 s x 3: 6 min), not the half hour of 300 s x 6
    smoke_test: bool = False
    device: str = "cpu"
    concurrency: int | None = None  # None: 8 for an HTTP judge, 1 for a local model
    price: dict[str, float] | None = field(default=None, hash=False)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], check_key: bool = True) -> JudgeConfig:
        """A validated judge config; ``check_key=False`` skips the key's presence (dry runs need no secret)."""
        cfg = dict(cfg)
        for secret in ("api_key", "key", "token"):
            if secret in cfg:
                raise InputError(f"eval.judge.{secret}: never put an API key in a config (Hydra and W&B store "
                                 "configs); export it and name the variable in eval.judge.api_key_env")
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"eval.judge: unknown field(s) {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        kind = JUDGE_KINDS.get(cfg.get("kind"))
        if not cfg.get("model"):
            raise InputError("eval.judge.model is empty: name the judge model (an endpoint's model id, or a "
                             "local checkpoint / packaged:smollm2 for kind=local)")
        cfg["price"] = _check_price(cfg.get("price"))  # before the generic check: it names the price key at fault
        JUDGE_KINDS.check_config(kind.name, cfg, "eval.judge")
        cfg["concurrency"] = _check_concurrency(cfg.get("concurrency"), kind)
        judge = cls(**cfg)
        if kind.check is not None:
            kind.check(judge, check_key)
        return judge

    def worst_case_s(self) -> float:
        """The longest one request can take before it fails: every attempt timing out, plus the backoffs."""
        return self.timeout_s * self.max_retries + sum(self.backoff_s * 2 ** a for a in range(self.max_retries - 1))

    def check_endpoint(self, check_key: bool = True) -> None:
        if not self.base_url:
            raise InputError("eval.judge.base_url is empty: give the OpenAI-compatible endpoint, e.g. "
                             "https://api.openai.com/v1 or http://localhost:8000/v1 for `vllm serve`")
        if not self.api_key_env:
            raise InputError("eval.judge.api_key_env is empty: name the environment variable holding the "
                             "endpoint's API key (e.g. OPENAI_API_KEY; any non-empty value for a keyless vLLM)")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):  # a pasted key is never echoed
            raise InputError(f"eval.judge.api_key_env must name an environment variable (letters, digits, _), got "
                             f"{self.api_key_env[:3]}... ({len(self.api_key_env)} characters); export the key and "
                             "name its variable")
        if check_key and not os.environ.get(self.api_key_env):
            raise InputError(f"environment variable {self.api_key_env} (eval.judge.api_key_env) is not set: "
                             f"export {self.api_key_env}=<key> before running")

    @property
    def in_process(self) -> bool:
        """A model in this process (:class:`JudgeKind`): one prompt at a time, a reply prefill possible."""
        return JUDGE_KINDS.get(self.kind).in_process

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two judges the same judge: the annotation caches are keyed by it (never by the key)."""
        return {"kind": self.kind, "model": self.model, "base_url": self.base_url}

    @property
    def label(self) -> str:
        name = f"{self.model} ({'local' if self.in_process else self.base_url})"
        return f"{name} [smoke-test judge, not a valid benchmark number]" if self.smoke_test else name

    def cost_usd(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """USD for one call from the price table (0 for a local model without one); None when an endpoint judge
        has no price or did not report its token usage."""
        if self.in_process and self.price is None:
            return 0.0  # an in-process model bills nothing
        if self.price is None or prompt_tokens is None or completion_tokens is None:
            return None
        return (prompt_tokens * self.price["input_usd_per_mtok"]
                + completion_tokens * self.price["output_usd_per_mtok"]) / 1e6


def _check_concurrency(value: int | None, kind: JudgeKind) -> int:
    """``value`` (already an integer >= 1 or None, by its declared constraint), or the kind's default."""
    if value is None:
        return kind.default_concurrency
    if kind.in_process and value != 1:
        raise InputError(f"eval.judge.concurrency={value} with a {kind.name} judge: one in-process model answers one "
                         "prompt at a time; set it to 1, or serve the model (vllm serve) and use kind=openai")
    return value


def _price_problem(price: Any) -> str | None:
    """What is wrong with an ``eval.judge.price`` value, or None."""
    if price is None:
        return None
    if not isinstance(price, Mapping) or set(price) != set(PRICE_KEYS):
        return f"eval.judge.price must give exactly {list(PRICE_KEYS)} (USD per million tokens), got {price!r}"
    for k in PRICE_KEYS:
        v = price[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            return f"eval.judge.price.{k} must be a non-negative number of USD per million tokens, got {v!r}"
    return None


def _check_price(price: Any) -> dict[str, float] | None:
    problem = _price_problem(price)
    if problem:
        raise InputError(problem)
    return None if price is None else {k: float(price[k]) for k in PRICE_KEYS}


# Fields every judge kind reads. ``price`` keeps its own, more precise messages (:func:`_price_problem`).
PRICE = Param(f"null or a mapping of exactly {list(PRICE_KEYS)} to non-negative numbers",
              lambda v: _price_problem(v) is None,
              ("x", {"input_usd_per_mtok": 1.0}, {"input_usd_per_mtok": -1.0, "output_usd_per_mtok": 1.0}))
COMMON_FIELDS: dict[str, Param] = {
    "model": text(), "max_retries": integer(lo=1), "smoke_test": flag(), "concurrency": optional(POSITIVE_INT),
    "price": PRICE}
ENDPOINT_FIELDS: dict[str, Param] = {
    "base_url": optional(text()), "api_key_env": optional(text()), "timeout_s": number(lo=0, lo_open=True),
    "backoff_s": NON_NEGATIVE}


class Judge(Protocol):
    config: JudgeConfig

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             top_logprobs: int | None = None, prefill: str = "") -> dict[str, Any]: ...


class ContentFault(Exception):
    """A reply that arrived but cannot be used (retried by our own loop)."""


class EndpointJudge:
    """A judge behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, config: JudgeConfig) -> None:
        import openai

        config.check_endpoint()
        self.config = config
        self._openai = openai
        # The client retries transport faults itself, honouring Retry-After; max_retries counts attempts.
        self.client = openai.OpenAI(base_url=config.base_url, api_key=os.environ[config.api_key_env],
                                    timeout=config.timeout_s, max_retries=config.max_retries - 1)
        log.info("judge %s at %s: %.0f s per request, %d attempts: a request fails after at most %.1f min",
                 config.model, config.base_url, config.timeout_s, config.max_retries, config.worst_case_s() / 60)

    def _once(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self.client.chat.completions.create(model=self.config.model, messages=messages, **kwargs)
        except (self._openai.APIResponseValidationError, ValueError) as e:
            raise ContentFault(f"malformed reply: {e}") from e
        if not getattr(resp, "choices", None):
            raise ContentFault("reply has no choices")
        choice = resp.choices[0].model_dump()
        text = (choice.get("message") or {}).get("content")
        if not isinstance(text, str):
            raise ContentFault("reply has no message content")
        if kwargs.get("logprobs") and not ((choice.get("logprobs") or {}).get("content")):
            raise ContentFault("reply has no logprobs although they were requested")
        usage = getattr(resp, "usage", None)
        choice["text"] = text
        choice["usage"] = {"prompt_tokens": getattr(usage, "prompt_tokens", None),
                           "completion_tokens": getattr(usage, "completion_tokens", None)}
        return choice

    def _refused(self, e: Any) -> JudgeError:
        status = getattr(e, "status_code", None)
        hint = REFUSALS.get(status, "see the endpoint's message").format(key_env=self.config.api_key_env)
        message = getattr(e, "message", None) or str(e)
        return JudgeError(f"judge model {self.config.model!r} at {self.config.base_url}: HTTP {status}: {message}. "
                          f"Fix: {hint}")

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
             top_logprobs: int | None = None, prefill: str = "") -> dict[str, Any]:
        if prefill:
            raise InputError("a reply prefill is only possible with a local judge (kind=local); chat endpoints "
                             "do not continue a partial reply: unset the prefill for this judge")
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if top_logprobs:
            kwargs |= {"logprobs": True, "top_logprobs": top_logprobs}
        transport = (self._openai.APITimeoutError, self._openai.APIConnectionError,
                     self._openai.InternalServerError, self._openai.RateLimitError)
        last: BaseException | None = None
        for attempt in range(1, self.config.max_retries + 1):
            try:
                return self._once(messages, kwargs)
            except transport as e:  # the client already retried max_retries times, honouring Retry-After
                last = e
                break
            except self._openai.APIStatusError as e:
                if e.status_code in REFUSALS:
                    raise self._refused(e) from None
                last = e  # another status the client gave up on (e.g. 409 after its retries)
                break
            except ContentFault as e:
                last = e
                log.warning("judge %s attempt %d/%d: %s", self.config.model, attempt, self.config.max_retries, e)
                if attempt < self.config.max_retries:
                    time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
        raise JudgeError(f"judge {self.config.model} at {self.config.base_url} failed {self.config.max_retries} "
                         f"times; last error {type(last).__name__}: {last}. Nothing was scored for this item; "
                         "re-run to retry (finished annotations are cached)") from last


@register_kind("openai", params=ENDPOINT_FIELDS, default_concurrency=8, check=JudgeConfig.check_endpoint)
def _endpoint_judge(config: JudgeConfig, cache_dir: str) -> Judge:
    return EndpointJudge(config)


JUDGE_LOCK_TIMEOUT_S = 24 * 3600.0  # a twin judging the same answers for longer than a day is stuck


def cache_lock(path: Path, what: str, timeout_s: float = JUDGE_LOCK_TIMEOUT_S) -> AbstractContextManager[None]:
    """An inter-process lock on a judge cache (:func:`divcore.locks.hold_lock`): processes judging into one cache
    never race on it."""
    return hold_lock(path, timeout_s, what)


T = TypeVar("T")
R = TypeVar("R")


WAITING_LINE_S = 30.0  # a progress line when no judgment came back for this long


def judge_many(fn: Callable[[T], R], items: Sequence[T], concurrency: int, *, desc: str = "judging",
               on_result: Callable[[int, R], None] | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on ``concurrency`` threads, in input order.

    ``on_result(i, result)`` runs in the calling thread as each item finishes (e.g. to append it to a cache), so
    a kill loses at most the calls in flight. On the first failure, items not yet started are cancelled, those
    in flight still finish and are reported to ``on_result``, and the failure is raised.
    """
    from tqdm.auto import tqdm

    results: list[Any] = [None] * len(items)
    bar = tqdm(total=len(items), desc=desc, disable=not items)
    if concurrency <= 1:
        for i, item in enumerate(items):
            results[i] = fn(item)
            if on_result is not None:
                on_result(i, results[i])
            bar.update()
        bar.close()
        return results
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge") as pool:
        futures: dict[Future, int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
        pending, error = set(futures), None
        last, started = time.monotonic(), time.monotonic()
        while pending:
            done, pending = wait(pending, timeout=WAITING_LINE_S, return_when=FIRST_COMPLETED)
            if done:
                last = time.monotonic()
            elif time.monotonic() - last >= WAITING_LINE_S:  # a slow or hung judge shows, not a frozen screen
                log.info("%s: waiting for the judge, %d of %d answered, no answer for %.0f s (%.0f s in all)", desc,
                         len(items) - len(pending), len(items), time.monotonic() - last, time.monotonic() - started)
            for fut in done:
                if fut.cancelled():
                    continue
                if fut.exception() is not None:
                    error = error or fut.exception()
                    continue
                i = futures[fut]
                results[i] = fut.result()
                if on_result is not None:
                    on_result(i, results[i])
                bar.update()
            if error is not None:
                for fut in pending:
                    fut.cancel()
    bar.close()
    if error is not None:
        raise error
    return results


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
        choice: dict[str, Any] = {"text": text, "message": {"role": "assistant", "content": text},
                                  "usage": {"prompt_tokens": int(ids.shape[1]),
                                            "completion_tokens": int(out.sequences.shape[1] - ids.shape[1])}}
        if top_logprobs:
            logp = torch.log_softmax(out.scores[0][0].float(), dim=-1)
            values, index = logp.topk(top_logprobs)
            top = [{"token": self.tok.decode([int(i)]), "logprob": float(v)} for v, i in zip(values, index, strict=True)
                   if math.isfinite(float(v))]
            choice["logprobs"] = {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"],
                                               "top_logprobs": top}]}
        return choice


@register_kind("local", params={"device": text()}, default_concurrency=1, in_process=True)
def _local_judge(config: JudgeConfig, cache_dir: str) -> Judge:
    from finetune.models import resolve_model

    return LocalJudge(config, resolve_model(config.model, cache_dir))


def make_judge(cfg: dict[str, Any] | JudgeConfig, cache_dir: str) -> Judge:
    """The judge ``cfg`` (``eval.judge``) describes, checked (:meth:`JudgeConfig.from_dict`) before it is built."""
    config = cfg if isinstance(cfg, JudgeConfig) else JudgeConfig.from_dict(cfg)
    return JUDGE_KINDS.get(config.kind).fn(config, cache_dir)
