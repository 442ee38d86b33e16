"""The evaluator seam: each evaluator maps (base model, adapter, config) to a dict with ``performance``.

``reference_nll`` is the offline default. Judge-based AlpacaEval and MT-Bench register here under their own
names, so a study switches benchmark with ``eval=<name>`` and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eval.reference_nll import load_reference, reference_nll
from metrics.validation import InputError

Evaluator = Callable[[str, str | None, dict[str, Any]], dict[str, Any]]


def _reference_nll(model_path: str, adapter: str | None, cfg: dict[str, Any]) -> dict[str, Any]:
    examples = load_reference(cfg["reference_path"], cfg.get("n_examples"), int(cfg.get("seed", 0)))
    return reference_nll(model_path, examples, adapter=adapter, max_length=int(cfg.get("max_length", 512)),
                         device=cfg.get("device", "cpu"))


EVALUATORS: dict[str, Evaluator] = {"reference_nll": _reference_nll}


def evaluate(name: str, model_path: str, adapter: str | None, cfg: dict[str, Any]) -> dict[str, Any]:
    if name not in EVALUATORS:
        raise InputError(f"unknown evaluator {name!r}; known: {sorted(EVALUATORS)}")
    return EVALUATORS[name](model_path, adapter, cfg)
