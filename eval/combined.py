"""One IT-performance number per fine-tuned model from several benchmarks, across the study's models.

The paper (Yang et al. 2025, sec. 4.1) standardises AlpacaEval and MT-Bench across its models and averages them.
``zscore_mean``: performance_i = mean_b (s_bi - mean_j s_bj) / std_j s_bj (population std over the study's
models); ``raw``: one benchmark column as is. The raw columns stay beside the combined one in runs.csv.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from divcore.errors import InputError

log = logging.getLogger(__name__)
METHODS = ("zscore_mean", "raw")


def combine_performance(runs: pd.DataFrame, columns: list[str], method: str = "zscore_mean") -> pd.Series:
    """The combined performance column. A benchmark that is constant across models has no z-score; it is left
    out with a warning, and if every benchmark is constant the result is NaN (undefined), never 0."""
    if method not in METHODS:
        raise InputError(f"eval.performance.method must be one of {METHODS}, got {method!r}")
    missing = [c for c in columns if c not in runs]
    if not columns or missing:
        raise InputError(f"eval.performance.columns {list(columns)}: {missing or 'none given'} not among the "
                         f"evaluation's columns {sorted(c for c in runs if c.startswith(('alpaca_eval', 'mt_bench')))}")
    if method == "raw":
        if len(columns) != 1:
            raise InputError("eval.performance.method=raw takes exactly one column")
        return runs[columns[0]].astype(float)
    z = []
    for c in columns:
        x = runs[c].astype(float)
        if x.isna().any():
            raise InputError(f"benchmark column {c} is missing for {int(x.isna().sum())} model(s)")
        std = x.std(ddof=0)
        if len(x) < 2 or std == 0:
            log.warning("benchmark %s is constant across the %d models: no z-score, left out of performance",
                        c, len(x))
            continue
        z.append((x - x.mean()) / std)
    if not z:
        return pd.Series(np.nan, index=runs.index)
    return pd.concat(z, axis=1).mean(axis=1)
