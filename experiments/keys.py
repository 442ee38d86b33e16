"""What a cache key hashes: the part of a config that defines a stage's result, never its runtime knobs.

One rule for every config group, applied before any stage key is built, instead of a list per stage:

* ``device`` and ``batch_size`` (inference batching) anywhere: where and how fast, not what. Training batch size is
  ``finetune.args.per_device_train_batch_size`` and stays hashed.
* a ``runtime`` node anywhere: a group may gather its knobs there.
* in ``finetune.args`` (TRL ``SFTConfig`` / ``TrainingArguments``, a third-party schema that has no runtime node):
  the fields that only observe or checkpoint a training: ``logging_*``, ``save_*``, ``report_to``, ``run_name``,
  ``disable_tqdm``, ``output_dir``, ``use_cpu``. None of them changes the trained weights (the trainer's RNG is seeded
  from ``seed`` / ``data_seed``).

A knob that does not change results therefore never invalidates a cached artifact
(``tests/test_cache_keys.py``).
"""

from __future__ import annotations

from typing import Any

RUNTIME_KEYS = frozenset({"device", "batch_size", "runtime"})
TRAINER_RUNTIME_KEYS = frozenset({"report_to", "run_name", "disable_tqdm", "output_dir", "use_cpu"})
TRAINER_RUNTIME_PREFIXES = ("logging_", "save_")
STAGE_GROUPS = ("pool", "embed", "metrics", "finetune", "eval")  # a subset's selector params: result_part


def _trainer_result_args(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items()
            if k not in TRAINER_RUNTIME_KEYS and not k.startswith(TRAINER_RUNTIME_PREFIXES)}


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


def result_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The study config as the cache keys see it: every stage group's result-defining part."""
    out = dict(cfg) | {g: result_part(cfg[g]) for g in STAGE_GROUPS if g in cfg}
    if isinstance((out.get("finetune") or {}).get("args"), dict):
        out["finetune"] = out["finetune"] | {"args": _trainer_result_args(out["finetune"]["args"])}
    return out
