"""The report's figures: a paper-style scatter per metric, a forest plot of every distinct metric's correlation with
its interval per base model, and NovelSum's grid heatmap.

Drawn with matplotlib's object API (``Figure``), which renders headless without touching pyplot's global backend.
The scatter's band is the classic confidence band of the fitted mean, yhat +- t_{n-2, 0.975} * s *
sqrt(1/n + (x - xbar)^2 / Sxx), with s the residual standard error of the line. Intervals are the table's
block-bootstrap intervals; over fewer than ``MIN_CI_BLOCKS`` blocks no interval is drawn (a percentile bootstrap
over so few units runs to +-1) and the caption says so.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from experiments.report import families as fam
from experiments.report.resampling import MIN_CI_BLOCKS
from experiments.report.stats import replicate_values

MARKERS = "osD^vP*Xh<>p"
DUPLICATE_SELECTORS = ("duplicate",)  # the arm of deliberately degenerate subsets, coloured apart
DUPLICATE_COLOUR, OTHER_COLOUR = "#c0392b", "#2c6fbb"


def fmt(v: object) -> str:
    """A table cell: 3 decimals, 'undefined' for NaN / missing."""
    if v is None or v is pd.NA:
        return "undefined"
    if isinstance(v, (float, np.floating)):
        return "undefined" if np.isnan(v) else f"{v:.3f}"
    return str(v)


short_name = fam.display_name
metric_label = fam.display_label


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


def no_ci_caption(n_blocks: int) -> str:
    return (f"No intervals drawn: {n_blocks} resampling units (< {MIN_CI_BLOCKS}); a bootstrap over so few "
            "units gives percentile intervals that run to +-1 and say nothing.")


def _interval(row: pd.Series, kind: str, show_ci: bool) -> str:
    if not show_ci:
        return ""
    return f" [{fmt(row[f'{kind}_ci_low'])}, {fmt(row[f'{kind}_ci_high'])}]"


def scatter(runs: pd.DataFrame, metric: str, rows: pd.DataFrame, path: Path, target: str = "performance",
            ylabel: str = "IT performance", *, model_names: dict[str, str] | None = None,
            untuned: float | None = None, show_ci: bool = True, caption: str | None = None) -> None:
    """One panel per base model: a point per subset (marker per selector, the duplicate arm in its own colour),
    each training replicate as a small dot beside it, least-squares fits with and without the duplicate arm,
    the untuned model's performance as a horizontal line when known; r and rho in the title."""
    several = "base_model" in runs and runs["base_model"].nunique() > 1
    models = sorted(runs["base_model"].unique()) if several else [None]
    fig = Figure(figsize=(5.2 * len(models) + 2.6, 4.4), dpi=120, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models), squeeze=False)[0])
    selectors = sorted(runs["selector"].astype(str).unique())
    for ax, model in zip(axes, models, strict=True):
        part = runs if model is None else runs[runs["base_model"] == model]
        _draw_points(ax, part, metric, target, selectors)
        _draw_fits(ax, part, metric, target, band=show_ci)
        if untuned is not None and np.isfinite(untuned):
            ax.axhline(untuned, color="0.35", ls=":", lw=1, label=f"untuned base model ({untuned:.4g})")
        row = rows[rows["base_model"] == ("all" if model is None else model)].iloc[0]
        name = (model_names or {}).get(model, model)
        ax.set_title(f"{'' if model is None else f'{name}: '}{short_name(metric)}\n"
                     f"r = {fmt(row['pearson_r'])}{_interval(row, 'pearson', show_ci)}, "
                     f"rho = {fmt(row['spearman_rho'])}{_interval(row, 'spearman', show_ci)}", fontsize=8)
        ax.set_xlabel(short_name(metric), fontsize=8)
        ax.set_ylabel(textwrap.fill(ylabel, 40), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=6.5, frameon=False)
    if caption:
        fig.supxlabel(textwrap.fill(caption, 110), fontsize=7, x=0.01, ha="left")
    save(fig, path)


def _caption(fig: Figure, text: str | None, width: int) -> None:
    """A caption above the panels (a constrained layout makes room for it, unlike free text)."""
    if text:
        fig.suptitle(textwrap.fill(text, width), fontsize=7, x=0.01, ha="left")


def is_duplicate_arm(runs: pd.DataFrame) -> np.ndarray:
    return runs["selector"].astype(str).isin(DUPLICATE_SELECTORS).to_numpy()


def _draw_points(ax, part: pd.DataFrame, metric: str, target: str, selectors: list[str]) -> None:
    """Subset means (marker per selector, colour per arm) and their training replicates as small dots."""
    for selector, group in part.groupby(part["selector"].astype(str), sort=True):
        dup = bool(is_duplicate_arm(group).all())
        colour = DUPLICATE_COLOUR if dup else OTHER_COLOUR
        marker = MARKERS[selectors.index(selector) % len(MARKERS)]
        if target == "performance" and "performance_replicates" in group:
            for x, cell in zip(group[metric], group["performance_replicates"], strict=True):
                reps = replicate_values(cell)
                if len(reps) > 1:
                    ax.scatter([x] * len(reps), reps, s=6, color=colour, alpha=0.35, lw=0, zorder=2)
        ax.scatter(group[metric], group[target], marker=marker, s=34, facecolors=colour if dup else "white",
                   edgecolors=colour, zorder=3, label=f"{selector}{' (duplicate arm, filled)' if dup else ''}")
    replicated = "performance_replicates" in part and any(
        len(replicate_values(c)) > 1 for c in part["performance_replicates"])
    if replicated and target == "performance":
        ax.scatter([], [], s=6, color="0.4", alpha=0.5, label="training replicates")


def _draw_fits(ax, part: pd.DataFrame, metric: str, target: str, band: bool = True) -> None:
    """The least-squares line over all subsets (with its 95% band, unless ``band`` is off) and over the subsets
    outside the duplicate arm, each labelled with its Pearson r."""
    x, y = part[metric].to_numpy(float), part[target].to_numpy(float)
    fits = [(np.ones(len(x), bool), "k", "-", "all subsets")]
    rest = ~is_duplicate_arm(part)
    if rest.any() and not rest.all():
        fits.append((rest, OTHER_COLOUR, "--", "without the duplicate arm"))
    for keep, colour, style, what in fits:
        fitted = fit_band(x[keep], y[keep])
        if fitted is None:
            continue
        grid, line, low, high = fitted
        ok = np.isfinite(x[keep]) & np.isfinite(y[keep])
        r = stats.pearsonr(x[keep][ok], y[keep][ok]).statistic if np.ptp(y[keep][ok]) > 0 else np.nan
        ax.plot(grid, line, color=colour, ls=style, lw=1.1, label=f"fit, {what} (n = {int(ok.sum())}, r = {r:.2f})")
        if style == "-" and band:
            ax.fill_between(grid, low, high, color=colour, alpha=0.10, lw=0, label="95% band of that fit")


def forest(table: pd.DataFrame, path: Path, xlabel: str = "Pearson r with performance (95% bootstrap interval)",
           q_alpha: float = 0.05, *, model_names: dict[str, str] | None = None, reference: str | None = None,
           show_ci: bool = True, caption: str | None = None) -> None:
    """Each distinct main-family metric's Pearson r with its interval, one colour per base model (and their mean);
    a filled marker where the block-permutation BH q is below ``q_alpha``; the noise ceiling (dashed) and the
    reference metric's r (dotted) as explained lines."""
    rows = _forest_rows(table)
    order = rows[rows["base_model"] == rows["base_model"].iloc[0]].sort_values("pearson_r", na_position="first")
    metrics = list(order["metric"])
    labels = [metric_label(m, s) for m, s in zip(order["metric"], order.get("same_as", [""] * len(order)),
                                                    strict=True)]
    models = list(dict.fromkeys(rows["base_model"]))
    names = model_names or {}
    fig = Figure(figsize=(8.5, 0.36 * len(metrics) * max(1, len(models) / 2) + 2.4), dpi=120, layout="constrained")
    ax = fig.subplots()
    step = 0.7 / max(1, len(models))
    q_col = "pearson_q_perm" if "pearson_q_perm" in rows and rows["pearson_q_perm"].notna().any() else "pearson_q"
    handles = []
    for k, model in enumerate(models):
        part = rows[rows["base_model"] == model].set_index("metric").reindex(metrics)
        ys = np.arange(len(metrics)) + (k - (len(models) - 1) / 2) * step
        colour = f"C{k}"
        if show_ci:
            err = np.vstack([part["pearson_r"] - part["pearson_ci_low"], part["pearson_ci_high"] - part["pearson_r"]])
            ax.errorbar(part["pearson_r"], ys, xerr=np.abs(err), fmt="none", ecolor=colour, elinewidth=1.2, capsize=2)
        significant = (part[q_col] < q_alpha).to_numpy(bool)
        ax.scatter(part["pearson_r"], ys, marker="o", s=30, facecolors=np.where(significant, colour, "white"),
                   edgecolors=colour, zorder=3)
        handles.append(Line2D([], [], color=colour, marker="o", ls="-" if show_ci else "",
                              label=names.get(model, "mean over base models" if model == "mean" else model)))
    handles += _forest_lines(ax, rows, reference, names)
    handles += [Line2D([], [], marker="o", ls="", mfc="0.3", mec="0.3", label=f"filled: BH q < {q_alpha:g}"
                       + (" (block permutation)" if q_col == "pearson_q_perm" else "")),
                Line2D([], [], marker="o", ls="", mfc="white", mec="0.3", label=f"open: q >= {q_alpha:g}")]
    ax.set_yticks(range(len(metrics)), labels, fontsize=7.5)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xticks(np.arange(-1.0, 1.01, 0.5))
    ax.set_xlabel(textwrap.fill(xlabel, 60), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    _caption(fig, caption, 120)
    save(fig, path)


def _forest_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows a forest plot shows: distinct, defined metrics of the main family (all rows of an older table)."""
    if "family" not in table:
        return table
    keep = (table["family"] == "main") & (table["representative"] == table["metric"]) & ~table["constant"].astype(bool)
    return table[keep]


def _forest_lines(ax, rows: pd.DataFrame, reference: str | None, names: dict[str, str]) -> list[Line2D]:
    """r = 0, the noise ceiling (dashed) and the reference metric's r (dotted), with legend entries saying what
    each is."""
    ax.axvline(0, color="0.3", lw=0.8)
    handles = [Line2D([], [], color="0.3", lw=0.8, label="r = 0 (no correlation)")]
    first = rows[rows["base_model"] == rows["base_model"].iloc[0]]
    ceiling = first["noise_ceiling"].dropna()
    if not ceiling.empty:
        c = float(ceiling.iloc[0])
        for sign in (-1, 1):
            ax.axvline(sign * c, color="0.45", ls="--", lw=0.8)
        handles.append(Line2D([], [], color="0.45", ls="--", lw=0.8,
                              label=f"noise ceiling +-{c:.2f}: the largest |r| this training noise allows"))
    ref = first[first["metric"] == reference]
    if reference is not None and not ref.empty and np.isfinite(ref["pearson_r"].iloc[0]):
        ax.axvline(float(ref["pearson_r"].iloc[0]), color="0.2", ls=":", lw=1)
        handles.append(Line2D([], [], color="0.2", ls=":", lw=1,
                              label=f"{short_name(reference)}'s r: the reference of the contrasts"))
    return handles


def novelsum_heatmap(table: pd.DataFrame, path: Path, *, show_ci: bool = True, caption: str | None = None) -> bool:
    """Pearson r over NovelSum's grid: rows neighbours K and density power B, columns distance power A; a
    diverging scale over [-1, 1] (so differences inside overlapping intervals do not look large), each cell's
    r and interval printed. False when the runs hold no grid."""
    grid = table[table["metric"].str.startswith("novelsum_grid[")]
    if grid.empty:
        return False
    keys = grid["metric"].str.extract(r"neighbors=(\d+),density_power=([\d.]+),distance_power=([\d.]+)")
    frame = pd.DataFrame({"K": keys[0].astype(int).to_numpy(), "B": keys[1].astype(float).to_numpy(),
                          "A": keys[2].astype(float).to_numpy(), "r": grid["pearson_r"].to_numpy(),
                          "low": grid["pearson_ci_low"].to_numpy(), "high": grid["pearson_ci_high"].to_numpy()})
    pivot = {v: frame.pivot_table(index=["K", "B"], columns="A", values=v, dropna=False) for v in ("r", "low", "high")}
    fig = Figure(figsize=(6.4, 5.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(pivot["r"].to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(pivot["r"].columns)), [f"{a:g}" for a in pivot["r"].columns])
    ax.set_yticks(range(len(pivot["r"].index)), [f"K = {k}, B = {b:g}" for k, b in pivot["r"].index], fontsize=8)
    ax.set_xlabel("distance power A (proximity weight)", fontsize=9)
    ax.set_ylabel("neighbours K, density power B (density factor)", fontsize=9)
    for (i, j), v in np.ndenumerate(pivot["r"].to_numpy()):
        text = fmt(float(v))
        if show_ci and np.isfinite(v):
            text += f"\n[{pivot['low'].to_numpy()[i, j]:.2f}, {pivot['high'].to_numpy()[i, j]:.2f}]"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if abs(v) > 0.6 else "k")
    fig.colorbar(im, ax=ax, label="Pearson r with performance")
    ax.set_title("NovelSum grid: Pearson r with performance" + (" (95% interval)" if show_ci else ""), fontsize=9)
    note = ("K: neighbours of the density factor; B: its power; A: the power of the proximity weight. B = 0 (no "
            "density factor) does not depend on K, so its rows repeat; cells whose intervals overlap do not differ."
            + (f" {caption}" if caption else ""))
    _caption(fig, note, 105)
    save(fig, path)
    return True
