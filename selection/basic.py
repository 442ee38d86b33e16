"""Selectors that need no embeddings: uniform random and the paper's low-diversity duplicate arm."""

from __future__ import annotations

import numpy as np

from divcore.errors import InputError
from divcore.params import POSITIVE_INT, number, optional
from selection.registry import PoolInputs, register


@register("random")
def random_subset(pool: PoolInputs, n: int, seed: int) -> list[int]:
    """n rows uniformly without replacement."""
    return np.random.default_rng(seed).choice(pool.size, size=n, replace=False).tolist()


def _unique_count(n: int, unique: int | None, unique_ratio: float | None) -> int:
    if (unique is None) == (unique_ratio is None):
        raise InputError("duplicate needs exactly one of 'unique' (a row count) or 'unique_ratio' (in (0, 1])")
    if unique_ratio is not None:
        if not 0 < float(unique_ratio) <= 1:
            raise InputError(f"duplicate: unique_ratio must be in (0, 1], got {unique_ratio}")
        return max(1, round(n * float(unique_ratio)))
    if isinstance(unique, bool) or not isinstance(unique, int) or not 0 < unique <= n:
        raise InputError(f"duplicate: unique must be an integer in [1, n={n}], got {unique!r}")
    return unique


@register("duplicate", distinct=False,
          params={"unique": optional(POSITIVE_INT), "unique_ratio": optional(number(0, 1, lo_open=True))})
def duplicate_subset(pool: PoolInputs, n: int, seed: int, unique: int | None = None,
                     unique_ratio: float | None = None) -> list[int]:
    """m distinct rows drawn uniformly, each repeated as evenly as possible up to n rows, then shuffled."""
    m = _unique_count(n, unique, unique_ratio)
    if m > pool.size:
        raise InputError(f"duplicate: {m} unique rows requested but the pool has {pool.size}")
    rng = np.random.default_rng(seed)
    rows = rng.choice(pool.size, size=m, replace=False)
    return rng.permutation(np.resize(rows, n)).tolist()
