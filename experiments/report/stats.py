"""The correlation statistics of the study: how each diversity metric tracks performance over few subsets.

For one base model with n subsets, metric x and performance y:

- Pearson r, Spearman rho, Kendall tau with their asymptotic p-values (``scipy.stats``); Kendall's p is exact
  (``method="exact"``) when neither column has ties, asymptotic otherwise (scipy has no exact null with ties).
- Permutation p-values: Pearson through ``scipy.stats.pearsonr(method=PermutationMethod(...))``; Spearman is the
  same test on average ranks (rho is Pearson's r of the ranks, so permuting ranks is Spearman's permutation test).
  scipy enumerates every pairing, i.e. the test is exact, when ``n! <= n_resamples``.
- Benjamini-Hochberg q-values over the metric rows of one base model (``scipy.stats.false_discovery_control``).
- Bootstrap: B resamples of the subsets (rows drawn with replacement), shared by every metric, so the interval of
  r(metric) - r(reference) is the percentile interval of the B paired differences. A resample in which x or y
  is constant has no correlation; it is skipped, and an interval needs at least B/2 defined resamples. The
  resampling is vectorised over B here because ``scipy.stats.bootstrap`` would propagate those NaNs into the
  interval and cannot share one set of resamples across metrics and base models.
- Partial correlation controlling for z (response length, quality): Pearson r of the residuals of x and y after
  a least-squares line on z; the Spearman version does the same on ranks.
- Noise floor from training replicates: the one-way ANOVA over subsets (``scipy.stats.f_oneway``); the reliability
  of a subset's replicate mean is 1 - 1/F (the intraclass correlation of means), and sqrt of it is the largest
  |r| any metric can reach against so noisy a performance (Spearman's attenuation ceiling).

Every statistic of a constant column, or of a column holding a missing value, is NaN ("undefined"), never 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from divcore.errors import InputError

MIN_PERMUTATION_SUBSETS = 4
NAN = float("nan")


def _constant(*cols: np.ndarray) -> bool:
    """True when a column is constant or holds a missing (non-finite) value: its correlation is undefined."""
    return any(not np.isfinite(c).all() or np.ptp(c) == 0 for c in cols)


def correlation(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(statistic, asymptotic p) of ``kind`` in pearson / spearman / kendall; NaN when x or y is constant or holds
    a missing value."""
    if _constant(x, y):
        return NAN, NAN
    if kind == "pearson":
        res = stats.pearsonr(x, y)
    elif kind == "spearman":
        res = stats.spearmanr(x, y)
    elif kind == "kendall":
        ties = len(np.unique(x)) < len(x) or len(np.unique(y)) < len(y)
        res = stats.kendalltau(x, y, method="asymptotic" if ties else "exact")
    else:
        raise ValueError(f"unknown correlation {kind!r}")
    return float(res.statistic), float(res.pvalue)


def permutation_p(kind: str, x: np.ndarray, y: np.ndarray, n_resamples: int, seed: int) -> float:
    """Two-sided permutation p-value of Pearson's r or Spearman's rho (exact when n! <= n_resamples); NaN, like the
    correlation itself, when x or y is constant or holds a missing value (ranks of NaN would give a p of 0)."""
    if len(x) < MIN_PERMUTATION_SUBSETS:
        raise InputError(f"a permutation test needs at least {MIN_PERMUTATION_SUBSETS} subsets, got {len(x)}: "
                         "add subsets or seeds")
    if _constant(x, y):
        return NAN
    if kind == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
    method = stats.PermutationMethod(n_resamples=int(n_resamples), rng=np.random.default_rng(seed))
    return float(stats.pearsonr(x, y, method=method).pvalue)


def bh_qvalues(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of the defined entries; undefined (NaN) entries stay NaN and do not
    count as tests."""
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def partial_correlation(x: np.ndarray, y: np.ndarray, z: np.ndarray, *, rank: bool = False) -> float:
    """Correlation of x and y with z partialled out (residuals of a line on z); Spearman's when ``rank``.
    NaN when any input is missing or a residual is constant."""
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(z).all()) or _constant(x, y):
        return NAN
    if rank:
        x, y, z = stats.rankdata(x), stats.rankdata(y), stats.rankdata(z)
    design = np.column_stack([np.ones_like(z, dtype=float), z])
    rx, ry = (v - design @ np.linalg.lstsq(design, v, rcond=None)[0] for v in (np.asarray(x, float),
                                                                              np.asarray(y, float)))
    scale = max(np.abs(x).max(), np.abs(y).max(), 1.0)
    if np.ptp(rx) <= 1e-12 * scale or np.ptp(ry) <= 1e-12 * scale:  # x or y is a line in z: nothing is left
        return NAN
    return float(stats.pearsonr(rx, ry).statistic)


def resample_indices(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) row indices: each row one bootstrap resample of the n subsets."""
    return rng.integers(0, n, (n_boot, n))


def rowwise_correlation(kind: str, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Pearson r (or Spearman rho) of every resample ``x[idx[b]], y[idx[b]]``; NaN where one is constant."""
    xs, ys = x[idx], y[idx]
    if kind == "spearman":
        xs, ys = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
    xc, yc = xs - xs.mean(axis=1, keepdims=True), ys - ys.mean(axis=1, keepdims=True)
    den = np.sqrt((xc**2).sum(axis=1) * (yc**2).sum(axis=1))
    constant = (np.ptp(xs, axis=1) == 0) | (np.ptp(ys, axis=1) == 0)  # rounding would give a spurious +-1
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / den
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the defined resamples; NaN when fewer than half of them are defined."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.size < values.size / 2:
        return NAN, NAN
    tail = 50 * (1 - level)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(fn, x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of ``fn`` (``stats.pearsonr`` or ``stats.spearmanr``) over resamples of (x, y)."""
    kind = {stats.pearsonr: "pearson", stats.spearmanr: "spearman"}[fn]
    idx = resample_indices(np.random.default_rng(seed), len(x), n_boot)
    return percentile_interval(rowwise_correlation(kind, np.asarray(x, float), np.asarray(y, float), idx))


def replicate_values(cell: object) -> list[float]:
    """The per-replicate performances stored in a runs.csv cell (a JSON list)."""
    if isinstance(cell, (list, tuple)):
        return [float(v) for v in cell]
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    values = json.loads(str(cell))
    return [float(v) for v in (values if isinstance(values, list) else [values])]


def noise_floor(replicates: Sequence[Sequence[float]]) -> dict[str, float | int | None]:
    """Training noise against the signal between subsets, from each subset's replicate performances.

    within_sd: mean over subsets of the replicates' SD (ddof=1); within_sd_pooled: sqrt of ANOVA's within-subset
    mean square; between_sd: SD (ddof=1) of the subsets' replicate means; f_stat, p_value: one-way ANOVA
    (``scipy.stats.f_oneway``) over the subsets with >= 2 replicates (needs two such subsets);
    reliability = 1 - 1/F (0 when F <= 1) and
    noise_ceiling = sqrt(reliability). Undefined entries are None.
    """
    groups = [np.asarray(g, float) for g in replicates if len(g) >= 2]
    means = np.array([np.mean(g) for g in replicates if len(g) >= 1])
    out: dict[str, float | int | None] = {
        "n_subsets": len(means), "n_replicated_subsets": len(groups),
        "replicates_per_subset": sorted({len(g) for g in replicates}),
        "within_sd": None, "within_sd_pooled": None,
        "between_sd": float(np.std(means, ddof=1)) if len(means) >= 2 else None,
        "ratio_between_within": None, "f_stat": None, "p_value": None, "reliability": None, "noise_ceiling": None}
    if not groups:
        return out
    sds = np.array([np.std(g, ddof=1) for g in groups])
    pooled = math.sqrt(sum((len(g) - 1) * s**2 for g, s in zip(groups, sds, strict=True))
                       / sum(len(g) - 1 for g in groups))
    out["within_sd"], out["within_sd_pooled"] = float(sds.mean()), pooled
    if out["between_sd"] is not None and sds.mean() > 0:
        out["ratio_between_within"] = out["between_sd"] / float(sds.mean())
    if len(groups) >= 2 and pooled > 0:  # an ANOVA over subsets needs two of them
        res = stats.f_oneway(*groups)
        f = float(res.statistic)
        out["f_stat"], out["p_value"] = f, float(res.pvalue)
        out["reliability"] = max(0.0, 1.0 - 1.0 / f) if f > 0 else 0.0
        out["noise_ceiling"] = math.sqrt(out["reliability"])
    return out


def noise_floor_of(runs: pd.DataFrame) -> dict[str, float | int | None]:
    """:func:`noise_floor` of a runs table's ``performance_replicates`` column (one subset per row)."""
    if "performance_replicates" not in runs:
        return noise_floor([[v] for v in runs["performance"].astype(float)])
    return noise_floor([replicate_values(c) for c in runs["performance_replicates"]])
