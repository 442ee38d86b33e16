"""Resampling with the right unit: bootstrap intervals and permutation tests over whole blocks of subsets.

A study lists some selectors with several seeds (six random subsets, two k-means subsets, ...) and some
deterministic-ish selectors whose "seeds" pick nearly the same rows. Subsets of one selector label are not
independent draws, so the unit of resampling is the block (``report.block``): ``selector`` (default) makes the
subsets of one selector label (runs.csv ``subset``) a block; ``none`` makes every subset its own block (the
ordinary bootstrap); any other value names a runs.csv column whose values define the blocks.

**Block bootstrap as weights.** Drawing G blocks with replacement from G gives each block a count c_g (one
multinomial(G, 1/G) draw); the resample is every row of block g repeated c_g times. A correlation of that
concatenated sample is the *weighted* correlation with row weights w_i = c_{g(i)}:

    r_w = sum_i w_i (x_i - xbar_w)(y_i - ybar_w) / sqrt(sum_i w_i (x_i - xbar_w)^2 * sum_i w_i (y_i - ybar_w)^2),

with xbar_w = sum_i w_i x_i / sum_i w_i, so all B resamples are one (B, n) array operation. Spearman's rho is the
weighted Pearson r of the weighted mid-ranks (a value's rank counts the repeated rows: rank(v) = #{obs < v} +
(#{obs == v} + 1) / 2). With one row per block this is the ordinary bootstrap. A resample in which x or y is
constant has no correlation (NaN) and is skipped by :func:`experiments.stats.percentile_interval`. The counts are
drawn once per report over the union of block labels and shared by every metric and every base model, so paired
differences (metric - reference, mean over models) are differences of the same resamples.

**Block permutation.** Under "no association" whole blocks are exchangeable, but blocks of unequal size cannot
swap rows one for one; a block enters the test as its mean. The permutation p-value is the test of the block
means' correlation (``experiments.stats.permutation_p``: scipy's two-sided convention, twice the smaller tail,
exact when G! <= n_resamples). With one row per block it is the ordinary row-level permutation test.

**Leave one block out** (``sensitivity.csv``): each metric's r and rho with each block's subsets removed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from divcore.errors import InputError
from divcore.registry import did_you_mean
from experiments.report import stats as st

BLOCK_ALIASES = {"selector": "subset", "none": None}  # report.block value -> runs.csv column (None: one per row)
MIN_CI_BLOCKS = 10  # figures draw no bootstrap interval over fewer blocks (percentile intervals then reach +-1)
NAN = float("nan")


def block_column(runs: pd.DataFrame, block: str | None) -> str | None:
    """The runs.csv column whose values are the blocks (None: every row its own block); a bad name is an error."""
    if block is None:
        return None
    column = BLOCK_ALIASES.get(str(block), str(block))
    if column is not None and column not in runs:
        raise InputError(f"report.block={block!r} is neither 'selector', 'none' nor a runs.csv column "
                         f"{did_you_mean(str(block), list(runs.columns))}: name the column whose values group "
                         "subsets that are not independent draws")
    return column


def block_labels(runs: pd.DataFrame, block: str | None) -> np.ndarray:
    """One label per row: the block it belongs to (its row number when blocks are single rows)."""
    column = block_column(runs, block)
    if column is None:
        return np.array([f"row {i}" for i in range(len(runs))], dtype=object)
    return runs[column].astype(str).to_numpy(dtype=object)


def has_repeated_blocks(labels: np.ndarray) -> bool:
    return len(set(labels)) < len(labels)


def draw_counts(rng: np.random.Generator, n_blocks: int, n_boot: int) -> np.ndarray:
    """(n_boot, n_blocks) block counts: each row one bootstrap draw of n_blocks blocks with replacement."""
    return rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), size=n_boot)


def row_weights(counts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(n_boot, n) row weights: each row's block count."""
    return counts[:, codes].astype(float)


def weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B, n) mid-ranks of x within each weighted resample (a row of weight w counts w times); the ranks of
    rows with weight 0 are defined but carry no weight."""
    values, inverse = np.unique(x, return_inverse=True)
    onehot = np.zeros((len(x), len(values)))
    onehot[np.arange(len(x)), inverse] = 1.0
    per_value = w @ onehot  # (B, U): how many observations hold each distinct value
    below = np.cumsum(per_value, axis=1) - per_value
    return (below + (per_value + 1.0) / 2.0)[:, inverse]


def weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of every weighted resample; x, y are (n,) or (B, n), w is (B, n). NaN where the resample's x
    or y is constant (or it has no rows)."""
    x, y = np.broadcast_to(x, w.shape), np.broadcast_to(y, w.shape)
    total = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = x - (w * x).sum(axis=1, keepdims=True) / total
        yc = y - (w * y).sum(axis=1, keepdims=True) / total
        r = (w * xc * yc).sum(axis=1) / np.sqrt((w * xc**2).sum(axis=1) * (w * yc**2).sum(axis=1))
    used = w > 0
    constant = (_spread(x, used) == 0) | (_spread(y, used) == 0)  # rounding would give a spurious +-1
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def _spread(v: np.ndarray, used: np.ndarray) -> np.ndarray:
    hi = np.where(used, v, -np.inf).max(axis=1)
    lo = np.where(used, v, np.inf).min(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(used.any(axis=1), hi - lo, 0.0)


def weighted_correlation(kind: str, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r or Spearman rho of each weighted resample (rows with a NaN in x or y get weight 0)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.all():
        x, y, w = x[ok], y[ok], w[:, ok]
    if len(x) < 3:
        return np.full(w.shape[0], np.nan)
    if kind == "spearman":
        return weighted_pearson(weighted_ranks(x, w), weighted_ranks(y, w), w)
    if kind != "pearson":
        raise ValueError(f"unknown correlation {kind!r}")
    return weighted_pearson(x, y, w)


def block_bootstrap(kind: str, x: np.ndarray, y: np.ndarray, labels: np.ndarray, n_boot: int,
                    seed: int) -> np.ndarray:
    """B bootstrap correlations of (x, y) resampling whole blocks (``labels``: one per row)."""
    codes, uniques = pd.factorize(pd.Series(labels), sort=True)
    counts = draw_counts(np.random.default_rng(seed), len(uniques), n_boot)
    return weighted_correlation(kind, np.asarray(x, float), np.asarray(y, float), row_weights(counts, codes))


def block_means(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each block's mean x and mean y over its complete rows (blocks with none are dropped)."""
    frame = pd.DataFrame({"block": labels, "x": x, "y": y}).dropna()
    means = frame.groupby("block", sort=True)[["x", "y"]].mean()
    return means["x"].to_numpy(float), means["y"].to_numpy(float)


def block_permutation_p(kind: str, x: np.ndarray, y: np.ndarray, labels: np.ndarray, n_resamples: int,
                        seed: int) -> float:
    """Two-sided permutation p-value with whole blocks exchangeable: the row-level test when every block is one
    row, else the test of the block means (NaN below 4 blocks with data: no permutation test is possible)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if not has_repeated_blocks(labels[ok]):
        return st.permutation_p(kind, x[ok], y[ok], n_resamples, seed)
    bx, by = block_means(x, y, labels)
    if len(bx) < st.MIN_PERMUTATION_SUBSETS:
        return NAN
    return st.permutation_p(kind, bx, by, n_resamples, seed)


def leave_one_block_out(runs: pd.DataFrame, metric_columns: list[str], labels: np.ndarray,
                        target: str = "performance") -> pd.DataFrame:
    """r and rho of every metric with each block left out: columns left_out, n, metric, pearson_r, spearman_rho
    (NaN where fewer than 3 complete pairs or a constant column remain)."""
    y = pd.to_numeric(runs[target], errors="coerce").to_numpy(float)
    rows = []
    for left_out in sorted(set(labels)):
        keep = labels != left_out
        for col in metric_columns:
            x = pd.to_numeric(runs[col], errors="coerce").to_numpy(float)[keep]
            ok = np.isfinite(x) & np.isfinite(y[keep])
            r = _plain(stats.pearsonr, x[ok], y[keep][ok])
            rho = _plain(stats.spearmanr, x[ok], y[keep][ok])
            rows.append({"left_out": left_out, "n": int(ok.sum()), "metric": col, "pearson_r": r,
                         "spearman_rho": rho})
    return pd.DataFrame(rows, columns=["left_out", "n", "metric", "pearson_r", "spearman_rho"])


def _plain(fn, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return NAN
    return float(fn(x, y).statistic)
