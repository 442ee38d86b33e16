"""What a cache key hashes: the part of a config that defines a stage's result, never its runtime knobs.

One rule for every config group, applied before any stage key is built, instead of a list per stage:

* ``device`` and ``batch_size`` (inference batching) anywhere: where and how fast, not what. Training batch size is
  ``finetune.args.per_device_train_batch_size`` and stays hashed.
* a ``runtime`` node anywhere: a group gathers its knobs there (``embed.runtime``).
* the runtime fields a group declares in ``GROUP_RUNTIME`` below, for knobs that predate the ``runtime`` node and
  that commands and docs spell at their old place (``finetune.resume=true``): ``finetune.resume`` and
  ``finetune.keep_checkpoints`` (whether a killed fine-tuning resumes from checkpoints, and whether those are kept),
  ``eval.judge.concurrency`` (judge requests in flight). They are declared here, beside the trainer's list, and
  nowhere else: a stage's key never subtracts a list of its own.
* in ``finetune.args`` (TRL ``SFTConfig`` / ``TrainingArguments``, a third-party schema that has no runtime node):
  the fields that only observe or checkpoint a training: ``logging_*``, ``save_*``, ``report_to``, ``run_name``,
  ``disable_tqdm``, ``output_dir``, ``use_cpu``, and ``activation_checkpointing`` / ``gradient_checkpointing`` when
  switched off (``TRAINER_OFF_KEYS``: the checkpointed second forward recomputes the activations bit for bit, so off
  keys as TRL's default, on, did; a config that switches it on keeps the key it had). None of them changes the
  trained weights (the trainer's RNG is seeded from ``seed`` / ``data_seed``).

``finetune.precision``, ``finetune.padding_free`` and ``eval.precision`` change results: they enter the keys resolved
(``auto`` -> this machine's choice) and only where they leave the float32 path (``eval.precision.keyed_precisions``).

A knob that does not change results therefore never invalidates a cached artifact
(``tests/test_cache_keys.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eval.precision import keyed_precisions

RUNTIME_KEYS = frozenset({"device", "batch_size", "runtime"})
TRAINER_RUNTIME_KEYS = frozenset({"report_to", "run_name", "disable_tqdm", "output_dir", "use_cpu"})
TRAINER_OFF_KEYS = frozenset({"activation_checkpointing", "gradient_checkpointing"})  # tests/test_throughput.py
TRAINER_RUNTIME_PREFIXES = ("logging_", "save_")
# (path of a config node, its runtime fields): how a stage runs, not what it produces
GROUP_RUNTIME: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = (
    (("finetune",), frozenset({"resume", "keep_checkpoints"})),
    (("eval", "judge"), frozenset({"concurrency"})),
)


def _trainer_result_args(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k not in TRAINER_RUNTIME_KEYS
            and not k.startswith(TRAINER_RUNTIME_PREFIXES) and not (k in TRAINER_OFF_KEYS and v is False)}


def result_part(node: Any) -> Any:
    """``node`` without its runtime knobs, recursively.

    >>> result_part({"model": "m", "batch_size": 8, "generation": {"device": "cuda", "temperature": 0.7}})
    {'model': 'm', 'generation': {'temperature': 0.7}}
    """
    if isinstance(node, dict):
        return {k: result_part(v) for k, v in node.items() if k not in RUNTIME_KEYS}
    if isinstance(node, list):
        return [result_part(v) for v in node]
    return node


def _without(node: dict[str, Any], path: tuple[str, ...], fields: frozenset[str]) -> dict[str, Any]:
    """``node`` with ``fields`` left out of its sub-node at ``path`` (unchanged where that sub-node is absent)."""
    head, *rest = path
    sub = node.get(head)
    if not isinstance(sub, dict):
        return node
    return node | {head: _without(sub, tuple(rest), fields) if rest else
                   {k: v for k, v in sub.items() if k not in fields}}


def result_config(cfg: dict[str, Any], groups: Iterable[str]) -> dict[str, Any]:
    """The study config as the cache keys see it: the result-defining part of every stage's config group
    (``groups``: ``Stage.config`` of the DAG's stages; a subset's selector params go through ``result_part``).

    >>> cfg = {"finetune": {"lora": None, "resume": True, "args": {"seed": 1, "logging_steps": 5}},
    ...        "eval": {"judge": {"model": "j", "concurrency": 8}}}
    >>> result_config(cfg, ["finetune", "eval"])
    {'finetune': {'lora': None, 'args': {'seed': 1}}, 'eval': {'judge': {'model': 'j'}}}
    """
    cfg = keyed_precisions(cfg)  # auto resolved; fp32 keyed as before the setting existed (eval.precision)
    out = dict(cfg) | {g: result_part(cfg[g]) for g in groups if g in cfg}
    if isinstance((out.get("finetune") or {}).get("args"), dict):
        out["finetune"] = out["finetune"] | {"args": _trainer_result_args(out["finetune"]["args"])}
    for path, fields in GROUP_RUNTIME:
        out = _without(out, path, fields)
    return out
