"""The one metric registry: each diversity metric is a plain function registered by name with what it needs.

A registered function is called as ``fn(inputs, **params)`` and returns a float, or a ``{key: float}`` dict
for metrics computed over a hyperparameter grid or with diagnostics: each key becomes column ``name[key]``,
except the key ``name`` itself, which is the metric's own column. :func:`compute` turns a list of
``{name, params}`` configs into one flat ``{column: value}`` row.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from metrics.validation import InputError

NEEDS = frozenset({"embeddings", "reference", "texts"})


@dataclass(frozen=True)
class MetricInputs:
    """What a metric may read: the subset's embeddings and texts, and the reference pool's embeddings."""

    embeddings: np.ndarray | None = None
    reference: np.ndarray | None = None
    texts: list[str] | None = None
    quality: np.ndarray | None = None  # the subset rows' quality scores, when the pool has them
    tags: list[list[str]] | None = None  # the subset rows' tags, when the pool has them
    reference_tags: list[list[str]] | None = None  # the pool's tags: MIG's label graph is built from them


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., float | dict[str, float]]
    needs: frozenset[str]
    family: str


_METRICS: dict[str, Metric] = {}


def register(name: str, *, needs: Iterable[str], family: str) -> Callable:
    needs = frozenset(needs)
    assert needs <= NEEDS, needs

    def wrap(fn: Callable) -> Callable:
        _METRICS[name] = Metric(name, fn, needs, family)
        return fn
    return wrap


def available() -> list[str]:
    return sorted(_METRICS)


def get_metric(name: str) -> Metric:
    if name not in _METRICS:
        raise InputError(f"unknown metric {name!r}; known metrics: {', '.join(available())}")
    return _METRICS[name]


def check_config(name: str, params: Mapping[str, Any]) -> Metric:
    """Fail fast, before any heavy work, on an unknown metric or hyperparameter."""
    metric = get_metric(name)
    accepted = list(inspect.signature(metric.fn).parameters)[1:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InputError(f"metric {name!r} has no hyperparameter(s) {unknown}; it accepts {accepted}")
    return metric


def compute_one(name: str, inputs: MetricInputs, **params: Any) -> dict[str, float]:
    metric = check_config(name, params)
    for need in metric.needs:
        if getattr(inputs, need) is None:
            raise InputError(f"metric {name!r} needs the subset's {need}, which were not provided")
    value = metric.fn(inputs, **params)
    if isinstance(value, dict):
        return {name if key == name else f"{name}[{key}]": float(v) for key, v in value.items()}
    return {name: float(value)}


def compute(configs: Iterable[Mapping[str, Any]], inputs: MetricInputs) -> dict[str, float]:
    """Compute every ``{"name": ..., "params": {...}}`` config; returns one flat row of columns."""
    row: dict[str, float] = {}
    for cfg in configs:
        row.update(compute_one(cfg["name"], inputs, **dict(cfg.get("params") or {})))
    return row
