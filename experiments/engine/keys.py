"""What a cache key hashes: the part of a config that defines a stage's result, never its runtime knobs.

Two rules for every config group, applied before any stage key is built (no stage subtracts a list of its own):

1. **Runtime names**, left out wherever they sit in a stage's config group (:data:`RUNTIME_KEYS`,
   :data:`RUNTIME_PREFIXES`): where and how fast, not what. ``device``, ``batch_size`` (inference batching; the
   training batch is ``finetune.args.per_device_train_batch_size`` and stays hashed), a ``runtime`` node (a group
   gathers its newer knobs there: ``embed.runtime``), ``resume`` / ``keep_checkpoints`` (whether a killed
   fine-tuning resumes from checkpoints, and whether those are kept), ``concurrency`` (judge requests in flight),
   and the trainer's fields that only observe or checkpoint a training (TRL ``SFTConfig``, a third-party schema
   with no runtime node): ``logging_*``, ``save_*``, ``report_to``, ``run_name``, ``disable_tqdm``, ``output_dir``,
   ``use_cpu``. None of them changes a result (the trainer's RNG is seeded from ``seed`` / ``data_seed``).
2. **Switches keyed only when on** (:data:`KEYED_WHEN_ON`): ``activation_checkpointing`` /
   ``gradient_checkpointing`` switched off are left out (the checkpointed second forward recomputes the activations
   bit for bit, so off keys as TRL's default, on, did; a config that switches it on keeps the key it had;
   tests/test_throughput.py); ``holdout`` unset (null) is left out likewise (no row held out draws the pool
   exactly as before the setting existed, so ``experiment=demo pool.holdout=null`` keys as the demo did before its
   held-out target).

``finetune.precision``, ``finetune.padding_free`` and ``eval.precision`` change results: they enter the keys resolved
(``auto`` -> this machine's choice) and only where they leave the float32 path (``eval.precision.keyed_precisions``).

A knob that does not change results therefore never invalidates a cached artifact
(``tests/test_cache_keys.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eval.precision import keyed_precisions

RUNTIME_KEYS = frozenset({"device", "batch_size", "runtime", "resume", "keep_checkpoints", "concurrency",
                          "report_to", "run_name", "disable_tqdm", "output_dir", "use_cpu"})
RUNTIME_PREFIXES = ("logging_", "save_")
KEYED_WHEN_ON = frozenset({"activation_checkpointing", "gradient_checkpointing"})
KEYED_WHEN_SET = frozenset({"holdout"})


def _runtime(key: str, value: Any) -> bool:
    return (key in RUNTIME_KEYS or key.startswith(RUNTIME_PREFIXES) or (key in KEYED_WHEN_ON and value is False)
            or (key in KEYED_WHEN_SET and value is None))


def result_part(node: Any) -> Any:
    """``node`` without its runtime knobs, recursively.

    >>> result_part({"model": "m", "batch_size": 8, "generation": {"device": "cuda", "temperature": 0.7}})
    {'model': 'm', 'generation': {'temperature': 0.7}}
    """
    if isinstance(node, dict):
        return {k: result_part(v) for k, v in node.items() if not _runtime(k, v)}
    if isinstance(node, list):
        return [result_part(v) for v in node]
    return node


def result_config(cfg: dict[str, Any], groups: Iterable[str]) -> dict[str, Any]:
    """The study config as the cache keys see it: the result-defining part of every stage's config group
    (``groups``: ``Stage.config`` of the DAG's stages; a subset's selector params go through ``result_part``).

    >>> cfg = {"finetune": {"lora": None, "resume": True, "args": {"seed": 1, "logging_steps": 5}},
    ...        "eval": {"judge": {"model": "j", "concurrency": 8}}}
    >>> result_config(cfg, ["finetune", "eval"])
    {'finetune': {'lora': None, 'args': {'seed': 1}}, 'eval': {'judge': {'model': 'j'}}}
    """
    cfg = keyed_precisions(cfg)  # auto resolved; fp32 keyed as before the setting existed (eval.precision)
    return dict(cfg) | {g: result_part(cfg[g]) for g in groups if g in cfg}
