"""Metric families: which columns of a runs table are distinct metrics, and which multiplicity family each is in.

Two columns whose values agree within ``TOLERANCE`` on every subset (|a - b| <= 1e-6 * max(1, |a|, |b|), NaN in
the same places) are one metric under two names: NovelSum at the grid point it is configured with, the grid's
points without density weighting (B = 0) at both neighbour counts K, DistSum-cosine and the grid's B = 0, A = 0
points. A column that is constant over the subsets has no correlation at all. Each distinct metric is reported
once, under all its names, and counts once in every multiplicity correction (Benjamini-Hochberg q, the contrast
family's Holm and BH); the other names copy its statistics. Families: ``novelsum_grid`` (NovelSum's
hyper-parameter grid, the heatmap) and ``main`` (every other metric: the table, the forest plot, the paper's table).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

TOLERANCE = 1e-6
# The paper's names, in the order of its Table 1 grouping: lexical, distance, distribution, NovelSum last.
PAPER_NAMES = {"ttr": "TTR", "vocd_d": "vocd-D", "facility_location": "Facility Location",
               "distsum_cosine": "DistSum_cosine", "vendi": "Vendi Score", "distsum_l2": "DistSum_L2",
               "knn_distance": "KNN Distance", "cluster_inertia": "Cluster Inertia", "radius": "Radius",
               "log_determinant": "Log Determinant", "partition_entropy": "Partition Entropy", "novelsum": "NovelSum"}
OTHER_NAMES = {"mig_information": "MIG information"}  # metrics the paper does not have
GRID_POINT = re.compile(r"novelsum_grid\[neighbors=(\d+),density_power=([\d.]+),distance_power=([\d.]+)\]")
GRID = "novelsum_grid"
MAIN = "main"
FAMILY_COLUMNS = ["metric", "family", "representative", "same_as", "constant"]


def family_of(metric: str) -> str:
    """``novelsum_grid`` for a point of NovelSum's grid, ``main`` otherwise."""
    return GRID if metric.startswith(f"{GRID}[") else MAIN


def identical(a: np.ndarray, b: np.ndarray, tol: float = TOLERANCE) -> bool:
    """Whether two columns hold the same values within ``tol`` (relative to max(1, |value|)), NaN alike."""
    na, nb = ~np.isfinite(a), ~np.isfinite(b)
    if not np.array_equal(na, nb):
        return False
    ok = ~na
    scale = np.maximum(1.0, np.maximum(np.abs(a[ok]), np.abs(b[ok])))
    return bool((np.abs(a[ok] - b[ok]) <= tol * scale).all())


def is_constant(a: np.ndarray) -> bool:
    finite = a[np.isfinite(a)]
    return finite.size == 0 or np.ptp(finite) == 0


def metric_families(runs: pd.DataFrame, metric_columns: list[str], tol: float = TOLERANCE) -> pd.DataFrame:
    """One row per metric column: its family, the representative it is reported under (itself when distinct;
    the first identical column of its family, in column order), every other column with the same values (of any
    family, ';'-separated) and whether it is constant (no correlation: counted in no family)."""
    values = {c: pd.to_numeric(runs[c], errors="coerce").to_numpy(float) for c in metric_columns}
    constant = {c: is_constant(v) for c, v in values.items()}
    rows = []
    for i, col in enumerate(metric_columns):
        same = [o for o in metric_columns if o != col and not constant[col] and not constant[o]
                and identical(values[col], values[o], tol)]
        family = family_of(col)
        earlier = [o for o in metric_columns[:i] if o in same and family_of(o) == family]
        rows.append({"metric": col, "family": family, "representative": earlier[0] if earlier else col,
                     "same_as": ";".join(same), "constant": constant[col]})
    return pd.DataFrame(rows, columns=FAMILY_COLUMNS)


def counted(families: pd.DataFrame) -> pd.Series:
    """Whether each metric row counts as a test in its multiplicity family: distinct and not constant."""
    return (families["representative"] == families["metric"]) & ~families["constant"]


def display_name(metric: str) -> str:
    """A reader's name: the paper's for its metrics (``log_determinant`` -> ``Log Determinant``), ``NovelSum grid
    K=10 B=0.5 A=1`` for a grid point, the column name otherwise (bracketed parameters kept)."""
    point = GRID_POINT.fullmatch(metric)
    if point:
        return f"NovelSum grid K={point[1]} B={point[2]} A={point[3]}"
    base, _, rest = metric.partition("[")
    name = PAPER_NAMES.get(base) or OTHER_NAMES.get(base) or base
    return f"{name} [{rest}" if rest else name


def display_label(metric: str, same_as: object = "") -> str:
    """The display name with the metric's other names (identical columns) after '='."""
    aliases = [display_name(a) for a in str(same_as or "").split(";") if a and a != "nan"]
    return display_name(metric) + (f" (= {', '.join(aliases)})" if aliases else "")
