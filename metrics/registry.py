"""The one metric registry: each diversity metric is a plain function registered by name with what it needs.

A registered function is called as ``fn(inputs, **params)`` and returns a float, or a ``{key: float}`` dict
for metrics computed over a hyperparameter grid or with diagnostics: each key becomes column ``name[key]``,
except the key ``name`` itself, which is the metric's own column. :func:`compute` turns a list of
``{name, params}`` configs into one flat ``{column: value}`` row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from divcore.errors import InputError
from divcore.params import Param
from divcore.registry import Registry, RegistryError, signature_defaults, signature_params
from metrics.signals import PoolSignals, SignalNeeds, union

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
    signals: PoolSignals | None = None  # the pool's precomputed signals (metrics.signals); None: computed here
    rows: np.ndarray | None = None  # the subset's row indices into the pool the signals describe


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., float | dict[str, float]]
    needs: frozenset[str]
    family: str
    params: dict[str, Param]  # every hyperparameter with its constraint, checked before any work
    signals: Callable[[dict[str, Any]], SignalNeeds] | None = None  # pool signals it reads, from its parameters


METRICS: Registry[Metric] = Registry("metric", param_noun="hyperparameter")


def register(name: str, *, needs: Iterable[str], family: str, params: Mapping[str, Param] | None = None,
             signals: Callable[[dict[str, Any]], SignalNeeds] | None = None) -> Callable:
    """Register ``fn(inputs, **hyperparameters)`` as metric ``name``. ``params`` declares constraints beyond the
    type each hyperparameter's annotation implies (``divcore.params``: ``integer(lo=1)``, ``one_of(...)``).
    ``signals(hyperparameters with defaults filled in)`` says which pool signals (:mod:`metrics.signals`) it reads
    from ``inputs.signals`` when they are given; it must then compute nothing pool-wide itself."""
    needs = frozenset(needs)
    if not needs <= NEEDS:
        raise RegistryError(f"metric {name!r}: needs {sorted(needs - NEEDS)} are not among {sorted(NEEDS)}")

    def wrap(fn: Callable) -> Callable:
        METRICS.add(name, Metric(name, fn, needs, family, signature_params(fn, 1, params or {}), signals))
        return fn
    return wrap


def available() -> list[str]:
    return METRICS.names()


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


def check_config(name: str, params: Mapping[str, Any]) -> Metric:
    """Fail fast, before any heavy work, on an unknown metric, an unknown hyperparameter or a bad value."""
    return METRICS.check_params(name, params)


def metric_needs(configs: Iterable[Mapping[str, Any]]) -> SignalNeeds:
    """The pool signals every ``{"name": ..., "params": {...}}`` config reads, checked first."""
    needs = []
    for cfg in configs:
        params = dict(cfg.get("params") or {})
        metric = check_config(cfg["name"], params)
        if metric.signals is not None:
            needs.append(metric.signals(signature_defaults(metric.fn, 1) | params))
    return union(needs)


def compute_one(name: str, inputs: MetricInputs, **params: Any) -> dict[str, float]:
    metric = check_config(name, params)
    for need in metric.needs:
        if getattr(inputs, need) is None:
            raise InputError(f"metric {name!r} needs the subset's {need}, which were not provided")
    for need in ("embeddings", "reference"):
        if need in metric.needs:
            _check_finite(getattr(inputs, need), f"metric {name!r}: the {need}")
    if inputs.quality is not None and not np.isfinite(np.asarray(inputs.quality, dtype=np.float64)).all():
        raise InputError(f"metric {name!r}: the subset's quality scores hold NaN or inf; fix the pool's 'quality' "
                         "values")
    value = metric.fn(inputs, **params)
    if isinstance(value, dict):
        return {name if key == name else f"{name}[{key}]": float(v) for key, v in value.items()}
    return {name: float(value)}


def _check_finite(x: np.ndarray, where: str) -> None:
    """Every metric gets real, finite input: one NaN row must fail loudly, not yield a number or a NaN."""
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{where} must be real numbers, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr).reshape(len(arr), -1).all(axis=1) if arr.ndim else ~np.isfinite(arr)
    if bad.any():
        raise InputError(f"{where} hold NaN or inf in {int(bad.sum())} rows (first: "
                         f"{np.flatnonzero(bad)[:5].tolist()}); re-embed those rows or drop them")


def compute(configs: Iterable[Mapping[str, Any]], inputs: MetricInputs) -> dict[str, float]:
    """Compute every ``{"name": ..., "params": {...}}`` config; returns one flat row of columns."""
    row: dict[str, float] = {}
    for cfg in configs:
        row.update(compute_one(cfg["name"], inputs, **dict(cfg.get("params") or {})))
    return row
