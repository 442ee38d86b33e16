"""The evaluator seam: each evaluator maps (base model, adapter, config) to a dict with ``performance``.

``reference_nll`` is the offline, judge-free evaluator. Evaluators live in the project's one registry shape
(``divcore.registry``): a name registers once and an unknown ``eval.name`` gets a "did you mean". The judged
AlpacaEval / MT-Bench path (``eval.name=benchmarks``) still runs through ``eval/benchmarks.py``'s generate and
judge halves, called by the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from divcore.params import Param
from divcore.registry import Registry
from eval.reference_nll import load_reference, reference_nll

EvaluatorFn = Callable[[str, str | None, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Evaluator:
    name: str
    fn: EvaluatorFn
    params: dict[str, Param] = field(default_factory=dict)


EVALUATORS: Registry[Evaluator] = Registry("evaluator")


def register(name: str) -> Callable[[EvaluatorFn], EvaluatorFn]:
    """Register ``fn(model_path, adapter, eval_cfg) -> {"performance": ..., ...}`` as evaluator ``name``."""
    def wrap(fn: EvaluatorFn) -> EvaluatorFn:
        EVALUATORS.add(name, Evaluator(name, fn))
        return fn
    return wrap


@register("reference_nll")
def _reference_nll(model_path: str, adapter: str | None, cfg: dict[str, Any]) -> dict[str, Any]:
    examples = load_reference(cfg["reference_path"], cfg.get("n_examples"), int(cfg.get("seed", 0)))
    return reference_nll(model_path, examples, adapter=adapter, max_length=int(cfg.get("max_length", 512)),
                         device=cfg.get("device", "cpu"))


def check_evaluator(name: str) -> None:
    """Fail before any work on an unknown ``eval.name``."""
    EVALUATORS.get(name)


def evaluate(name: str, model_path: str, adapter: str | None, cfg: dict[str, Any]) -> dict[str, Any]:
    return EVALUATORS.get(name).fn(model_path, adapter, cfg)
