"""The one selector registry: every subset builder is a plain function registered here by name.

A selector is called as ``fn(inputs, n, seed, **params)`` and returns ``n`` row indices into the pool, or a
:class:`Selection` whose provenance adds what the selector alone knows (e.g. MIG's label graph size).
:func:`select` validates the budget, the parameters and the result, and attaches a provenance record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from divcore.errors import InputError
from divcore.params import Param
from divcore.registry import Registry, signature_defaults, signature_params
from metrics.signals import PoolSignals, SignalNeeds, union
from metrics.validation import as_embeddings, check_positive_int


@dataclass(frozen=True)
class PoolInputs:
    """What a selector may read about the pool. ``size`` is the number of rows."""

    size: int
    embeddings: np.ndarray | None = None
    quality: np.ndarray | None = None
    tags: list[list[str]] | None = None
    proxy_quality: np.ndarray | None = None  # offline stand-in when the pool has no quality column
    fingerprint: str = ""
    signals: PoolSignals | None = None  # precomputed pool-wide work (metrics.signals); None: computed here


@dataclass(frozen=True)
class Selector:
    name: str
    fn: Callable[..., list[int]]
    needs: frozenset[str]
    distinct: bool = True  # False for selectors that repeat rows on purpose (duplicate)
    params: dict[str, Param] = field(default_factory=dict)  # every parameter with its constraint
    signals: Callable[[dict[str, Any], int], SignalNeeds] | None = None  # pool signals read, from (params, seed)


@dataclass
class Selection:
    """``indices`` in pick order (the last is the lowest-ranked pick); ``strata``: optionally one stratum id per pool
    row (-1: never eligible), so that a study-level swap (:mod:`selection.design`) replaces a pick only by an
    unselected row of the same stratum (a k-means cluster, a pool half) and keeps what the selector controlled."""

    indices: list[int]
    provenance: dict[str, Any] = field(default_factory=dict)
    strata: np.ndarray | None = field(default=None, repr=False)


SELECTORS: Registry[Selector] = Registry("selector")


def register(name: str, *, needs: tuple[str, ...] = (), distinct: bool = True,
             params: Mapping[str, Param] | None = None,
             signals: Callable[[dict[str, Any], int], SignalNeeds] | None = None) -> Callable:
    """Register ``fn(pool, n, seed, **params)`` as selector ``name``. ``params`` declares constraints beyond the
    type each parameter's annotation implies (``divcore.params``). ``signals(params with defaults, seed)`` says
    which pool signals (:mod:`metrics.signals`) it reads from ``pool.signals`` when they are given."""
    def wrap(fn: Callable[..., list[int]]) -> Callable[..., list[int]]:
        SELECTORS.add(name, Selector(name, fn, frozenset(needs), distinct, signature_params(fn, 3, params or {}),
                                     signals))
        return fn
    return wrap


def available() -> list[str]:
    return SELECTORS.names()


def get_selector(name: str) -> Selector:
    return SELECTORS.get(name)


def check_params(sel: Selector, params: dict[str, Any]) -> None:
    """Fail fast, before any heavy work, on an unknown parameter or a bad value."""
    SELECTORS.check_params(sel.name, params)


def effective_params(sel: Selector, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the selector's defaults: what a run actually used."""
    check_params(sel, params)
    return signature_defaults(sel.fn, 3) | params


def selector_needs(entries: list[Mapping[str, Any]]) -> SignalNeeds:
    """The pool signals the ``{"selector", "params", "seed"}`` entries of a selection plan read, checked first."""
    needs = []
    for entry in entries:
        sel = get_selector(entry["selector"])
        if sel.signals is not None:
            needs.append(sel.signals(effective_params(sel, dict(entry.get("params") or {})), int(entry["seed"])))
    return union(needs)


def _check_inputs(sel: Selector, pool: PoolInputs) -> PoolInputs:
    if pool.size <= 0:
        raise InputError("the pool is empty: nothing to select from")
    for need in sel.needs:
        value = getattr(pool, need)
        if value is None:
            raise InputError(f"selector {sel.name!r} needs the pool's {need}, which were not provided")
        if len(value) != pool.size:
            raise InputError(f"the pool's {need} have {len(value)} rows but the pool has {pool.size}")
    if "embeddings" in sel.needs:
        pool = replace(pool, embeddings=as_embeddings(pool.embeddings, "pool embeddings"))
    if pool.quality is not None and not np.isfinite(np.asarray(pool.quality, dtype=float)).all():
        raise InputError("the pool's quality scores contain NaN or inf")
    return pool


def select(name: str, pool: PoolInputs, n: int, seed: int, **params: Any) -> Selection:
    """Run selector ``name`` for a budget of ``n`` rows; raise :class:`InputError` on any bad input."""
    sel = get_selector(name)
    n = check_positive_int(n, "subset size n")
    if sel.distinct and n > pool.size:
        raise InputError(f"subset size n={n} is larger than the pool ({pool.size} rows): lower n or use a "
                         "larger pool")
    check_params(sel, params)
    pool = _check_inputs(sel, pool)
    result = sel.fn(pool, n, int(seed), **params)
    extra = result.provenance if isinstance(result, Selection) else {}
    indices = [int(i) for i in (result.indices if isinstance(result, Selection) else result)]
    if len(indices) != n or min(indices) < 0 or max(indices) >= pool.size:
        raise RuntimeError(f"selector {name!r} returned {len(indices)} indices for n={n}")
    if sel.distinct and len(set(indices)) != n:
        raise RuntimeError(f"selector {name!r} returned repeated rows")
    provenance = {"selector": name, "params": params, "seed": int(seed), "n": n,
                  "pool_size": pool.size, "pool_fingerprint": pool.fingerprint,
                  "unique_rows": len(set(indices))} | extra
    return Selection(indices, provenance, result.strata if isinstance(result, Selection) else None)
