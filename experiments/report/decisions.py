"""Decision accuracy: would a metric have picked the better of two subsets? (as DataDecide reports for
pre-training data decisions, Magnusson et al. 2025).

A pair of subsets (i, j) is a *decision* when their performances differ beyond the training noise:

    |y_i - y_j| > Z * s_w * sqrt(1/m_i + 1/m_j),

with s_w the pooled within-subset SD of the training replicates (``noise_floor.json``'s ``within_sd_pooled``),
m the replicates per subset and Z = 1.96 (a two-sided 95% test of the difference). Without replicates the noise is
unknown and every pair with different performance counts. A metric gets a decision right when it orders the pair
as performance does (higher metric, higher performance), half right on a tie in the metric, wrong otherwise:

    accuracy = sum_{decisions} c_ij / #decisions,  c_ij = 1 if sign(x_i - x_j) = sign(y_i - y_j), 1/2 if x_i = x_j.

Chance is 0.5. The interval resamples whole blocks (:mod:`experiments.report.resampling`): a resample's pairs are the
pairs of its concatenated rows, i.e. pair (i, j) weighted w_i * w_j; a row repeated with itself is no decision.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

Z = 1.96
NAN = float("nan")


def decision_pairs(runs: pd.DataFrame, within_sd_pooled: float | None, target: str = "performance") -> np.ndarray:
    """(n, n) symmetric boolean matrix of the pairs whose performance differs beyond the noise floor."""
    y = pd.to_numeric(runs[target], errors="coerce").to_numpy(float)
    diff = np.abs(y[:, None] - y[None, :])
    if within_sd_pooled is None or not np.isfinite(within_sd_pooled) or within_sd_pooled <= 0:
        beyond = diff > 0
    else:
        m = replicates_per_row(runs)
        beyond = diff > Z * within_sd_pooled * np.sqrt(1.0 / m[:, None] + 1.0 / m[None, :])
    beyond &= np.isfinite(diff)
    np.fill_diagonal(beyond, False)
    return beyond


def replicates_per_row(runs: pd.DataFrame) -> np.ndarray:
    """Training replicates behind each row's performance (1 when runs.csv does not say)."""
    if "n_replicates" in runs:
        return pd.to_numeric(runs["n_replicates"], errors="coerce").fillna(1).clip(lower=1).to_numpy(float)
    if "performance_replicates" in runs:
        return np.array([max(1, len(json.loads(str(c)))) if isinstance(c, str) else 1
                         for c in runs["performance_replicates"]], dtype=float)
    return np.ones(len(runs))


def concordance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, n) credit of each pair: 1 when x orders it as y does, 1/2 on a tie in x, 0 otherwise (NaN x: NaN)."""
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    with np.errstate(invalid="ignore"):
        return np.where(sx == 0, 0.5, (sx == sy).astype(float))


def decision_accuracy(x: np.ndarray, y: np.ndarray, pairs: np.ndarray, w: np.ndarray | None = None
                      ) -> float | np.ndarray:
    """The share of decisions the metric gets right; with ``w`` ((B, n) row weights) one value per resample
    (NaN where a resample holds no decision). Rows with a missing metric value leave out their pairs; a constant
    metric is undefined (NaN)."""
    ok = np.isfinite(x)
    if not ok.any() or np.ptp(x[ok]) == 0:  # a constant metric orders nothing: undefined, not chance
        return NAN if w is None else np.full(w.shape[0], np.nan)
    eligible = pairs & ok[:, None] & ok[None, :]
    credit = np.where(eligible, np.nan_to_num(concordance(np.where(ok, x, 0.0), y)), 0.0)
    if w is None:
        n = eligible.sum()
        return float(credit.sum() / n) if n else NAN
    right = ((w @ credit) * w).sum(axis=1)
    total = ((w @ eligible.astype(float)) * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / total, np.nan)
