"""The report's figures: a paper-style scatter per metric (with its least-squares line and 95% confidence band),
a forest plot of every metric's correlation with its interval per base model, and NovelSum's grid heatmap.

Drawn with matplotlib's object API (``Figure``), which renders headless without touching pyplot's global backend.
The band is the classic confidence band of the fitted mean, yhat +- t_{n-2, 0.975} * s * sqrt(1/n + (x - xbar)^2 /
Sxx), with s the residual standard error of the line.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

MARKERS = "osD^vP*Xh<>p"


def fmt(v: object) -> str:
    """A table cell: 3 decimals, 'undefined' for NaN / missing."""
    if v is None or v is pd.NA:
        return "undefined"
    if isinstance(v, (float, np.floating)):
        return "undefined" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def fit_band(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray] | None:
    """(grid, fitted line, band low, band high) of the least-squares line of y on x; None when undefined."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0:
        return None
    fit = stats.linregress(x, y)
    grid = np.linspace(x.min(), x.max(), 100)
    line = fit.intercept + fit.slope * grid
    resid = y - (fit.intercept + fit.slope * x)
    s = np.sqrt((resid**2).sum() / (len(x) - 2))
    half = stats.t.ppf(0.5 + level / 2, len(x) - 2) * s * np.sqrt(
        1 / len(x) + (grid - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    return grid, line, line - half, line + half


def scatter(runs: pd.DataFrame, metric: str, rows: pd.DataFrame, path: Path, target: str = "performance",
            ylabel: str = "IT performance") -> None:
    """One panel per base model: a point per subset (marker per selection strategy, error bar = replicate SD),
    the least-squares line and its 95% confidence band, r and rho with their intervals in the title."""
    models = sorted(runs["base_model"].unique()) if "base_model" in runs and runs["base_model"].nunique() > 1 \
        else [None]
    fig = Figure(figsize=(5 * len(models), 4.2), dpi=120)
    axes = np.atleast_1d(fig.subplots(1, len(models), squeeze=False)[0])
    labels = sorted(runs["subset"].unique())
    for ax, model in zip(axes, models, strict=True):
        part = runs if model is None else runs[runs["base_model"] == model]
        for label, group in part.groupby("subset", sort=True):
            yerr = group["performance_sd"] if "performance_sd" in group and target == "performance" else None
            ax.errorbar(group[metric], group[target], yerr=yerr, fmt=MARKERS[labels.index(label) % len(MARKERS)],
                        label=label, ms=6, capsize=2, elinewidth=0.8)
        band = fit_band(part[metric].to_numpy(float), part[target].to_numpy(float))
        if band is not None:
            grid, line, low, high = band
            ax.plot(grid, line, color="k", lw=1)
            ax.fill_between(grid, low, high, color="k", alpha=0.12, lw=0, label="95% band of the fit")
        row = rows[rows["base_model"] == ("all" if model is None else model)].iloc[0]
        ax.set_title(f"{'' if model is None else f'{model}: '}{metric}\n"
                     f"r = {fmt(row['pearson_r'])} [{fmt(row['pearson_ci_low'])}, {fmt(row['pearson_ci_high'])}], "
                     f"rho = {fmt(row['spearman_rho'])}", fontsize=8)
        ax.set_xlabel(metric)
        ax.set_ylabel(textwrap.fill(ylabel, 48), fontsize=8)  # long proxy labels would run off the figure
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    save(fig, path)


def forest(table: pd.DataFrame, path: Path, xlabel: str = "Pearson r with performance (95% bootstrap interval)",
           q_alpha: float = 0.05) -> None:
    """Each metric's Pearson r with its interval, one colour per base model (and their mean); a filled marker
    where the BH q-value is below ``q_alpha``; dashed lines at the noise ceiling when it is known."""
    metrics = list(dict.fromkeys(table.sort_values("pearson_r", na_position="first")["metric"]))
    models = list(dict.fromkeys(table["base_model"]))
    fig = Figure(figsize=(6.5, 0.32 * len(metrics) * max(1, len(models) / 2) + 1.5), dpi=120)
    ax = fig.subplots()
    step = 0.7 / max(1, len(models))
    for k, model in enumerate(models):
        part = table[table["base_model"] == model].set_index("metric")
        ys = np.arange(len(metrics)) + (k - (len(models) - 1) / 2) * step
        r = part.reindex(metrics)
        err = np.vstack([r["pearson_r"] - r["pearson_ci_low"], r["pearson_ci_high"] - r["pearson_r"]])
        color = f"C{k}"
        ax.errorbar(r["pearson_r"], ys, xerr=np.abs(err), fmt="none", ecolor=color, elinewidth=1, capsize=2)
        significant = (r["pearson_q"] < q_alpha).to_numpy(bool)
        ax.scatter(r["pearson_r"][~significant], ys[~significant], marker="o", facecolors="white",
                   edgecolors=color, zorder=3, label=f"{model}")
        ax.scatter(r["pearson_r"][significant], ys[significant], marker="o", color=color, zorder=3,
                   label=f"{model}, BH q < {q_alpha:g}")
        ceiling = part["noise_ceiling"].dropna()
        if not ceiling.empty:
            for sign in (-1, 1):
                ax.axvline(sign * float(ceiling.iloc[0]), color=color, ls="--", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(metrics)), [re.sub(r",", ",\n", m) if len(m) > 30 else m for m in metrics], fontsize=7)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    save(fig, path)


def novelsum_heatmap(table: pd.DataFrame, path: Path) -> bool:
    """Pearson r over NovelSum's grid, rows (K, B), columns A; False when the runs hold no grid."""
    grid = table[table["metric"].str.startswith("novelsum_grid[")]
    if grid.empty:
        return False
    keys = grid["metric"].str.extract(r"neighbors=(\d+),density_power=([\d.]+),distance_power=([\d.]+)")
    frame = pd.DataFrame({"K": keys[0].astype(int), "B": keys[1].astype(float), "A": keys[2].astype(float),
                          "r": grid["pearson_r"].to_numpy()})
    pivot = frame.pivot_table(index=["K", "B"], columns="A", values="r", dropna=False)
    fig = Figure(figsize=(4.5, 4), dpi=120)
    ax = fig.subplots()
    im = ax.imshow(pivot.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(pivot.columns)), [f"A={a:g}" for a in pivot.columns])
    ax.set_yticks(range(len(pivot.index)), [f"K={k}, B={b:g}" for k, b in pivot.index])
    for (i, j), v in np.ndenumerate(pivot.to_numpy()):
        ax.text(j, i, fmt(float(v)), ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="Pearson r")
    ax.set_title("NovelSum grid: correlation with performance", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return True
