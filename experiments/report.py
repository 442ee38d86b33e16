"""Correlation of every diversity metric with performance: tables (Markdown, CSV, LaTeX) and scatter plots.

Statistics per metric (and per base model when runs.csv holds several, then their mean, as the paper
averages LLaMA and Qwen): Pearson, Spearman and Kendall (scipy.stats) with p-values, and 95% percentile
bootstrap intervals from resampling subsets. The bootstrap is written out rather than taken from
``scipy.stats.bootstrap`` because small studies draw many resamples with a constant column, which must be
skipped (correlation undefined), not propagated as NaN into the interval.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API draws headless, without touching pyplot's backend
from scipy import stats

from experiments.cache import atomic_write
from metrics.validation import InputError

log = logging.getLogger(__name__)
RUNS_SCHEMA = 1
REQUIRED_RUN_COLUMNS = ("subset", "selector", "seed", "performance")
STATS = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}
TABLE_COLUMNS = ["base_model", "metric", "pearson_r", "pearson_ci_low", "pearson_ci_high", "pearson_p",
                 "spearman_rho", "spearman_ci_low", "spearman_ci_high", "spearman_p", "kendall_tau", "kendall_p",
                 "n"]
PAPER_REPORTED = Path(__file__).with_name("paper_reported.csv")


def _corr(fn, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # correlation undefined, not 0
        return float("nan"), float("nan")
    res = fn(x, y)
    return float(res.statistic), float(res.pvalue)


def bootstrap_ci(fn, x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of ``fn`` over resamples of the (x, y) pairs; NaN when too few are defined."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        values.append(_corr(fn, x[idx], y[idx])[0])
    values = np.array(values)
    if np.isfinite(values).sum() < n_boot / 2:
        return float("nan"), float("nan")
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def correlate(runs: pd.DataFrame, metric_columns: list[str], target: str = "performance", *,
              n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Correlation statistics of each metric column against ``target``; NaN (reported 'undefined') where a
    column is constant. Rows are grouped by ``base_model`` when present, plus their mean."""
    several = "base_model" in runs and runs["base_model"].nunique() > 1
    groups = runs.groupby("base_model") if several else [("all", runs)]
    tables = [_correlate_group(g, metric_columns, target, n_boot, seed).assign(base_model=name)
              for name, g in groups]
    table = pd.concat(tables, ignore_index=True)
    if len(tables) > 1:
        mean = table.groupby("metric", sort=False)[TABLE_COLUMNS[2:]].mean().reset_index().assign(base_model="mean")
        table = pd.concat([table, mean], ignore_index=True)
    return table[TABLE_COLUMNS]


def _correlate_group(runs: pd.DataFrame, metric_columns: list[str], target: str, n_boot: int,
                     seed: int) -> pd.DataFrame:
    if len(runs) < 3:
        raise InputError(f"correlation needs at least 3 subsets, the study has {len(runs)}: add subsets or seeds")
    y = runs[target].to_numpy(float)
    rows = []
    for col in metric_columns:
        x = runs[col].to_numpy(float)
        row = {"metric": col, "n": len(x)}
        for name, fn in STATS.items():
            stat = {"pearson": "pearson_r", "spearman": "spearman_rho", "kendall": "kendall_tau"}[name]
            row[stat], row[f"{name}_p"] = _corr(fn, x, y)
            if name != "kendall":
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = bootstrap_ci(fn, x, y, n_boot, seed)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("pearson_r", ascending=False, na_position="last", ignore_index=True)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "undefined" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def to_markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def with_paper_values(table: pd.DataFrame, reported: Path = PAPER_REPORTED) -> pd.DataFrame:
    """Add the paper's reported figure beside ours, marked as the paper's (metric base name match)."""
    paper = pd.read_csv(reported)
    lookup = {r.metric: f"{r.value:g} (paper: {r.statistic})" for r in paper.itertuples()}
    base = table["metric"].str.split("[", regex=False).str[0]
    return table.assign(paper_reported=[lookup.get(m, "") for m in base])


def performance_note(runs: pd.DataFrame) -> str | None:
    """A warning for the table and figures when any performance comes from a smoke-test judge."""
    if "judge_smoke_test" not in runs or not runs["judge_smoke_test"].astype(bool).any():
        return None
    judges = sorted({str(j).split(" [")[0] for j in runs.loc[runs["judge_smoke_test"].astype(bool), "judge"]})
    return (f"IT performance here comes from a smoke-test judge ({'; '.join(judges)}): it exercises the "
            "evaluation code path and is not a valid benchmark number.")


def to_latex(table: pd.DataFrame, note: str | None = None) -> str:
    """A booktabs table of r and rho with their intervals; the best value of each column in bold."""
    cols = [("pearson_r", "Pearson $r$"), ("spearman_rho", "Spearman $\\rho$"), ("kendall_tau", "Kendall $\\tau$")]
    best = {c: table[c].max() for c, _ in cols}
    lines = ["\\begin{tabular}{ll" + "r" * len(cols) + "}", "\\toprule",
             "Base model & Metric & " + " & ".join(label for _, label in cols) + " \\\\", "\\midrule"]
    for row in table.itertuples(index=False):
        cells = []
        for c, _ in cols:
            v = getattr(row, c)
            text = "undef." if np.isnan(v) else f"{v:.3f}"
            cells.append(f"\\textbf{{{text}}}" if np.isfinite(v) and v == best[c] else text)
        metric = str(row.metric).replace("_", "\\_")
        lines.append(f"{row.base_model} & {metric} & " + " & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    if note:
        lines.append(f"\\multicolumn{{{2 + len(cols)}}}{{l}}{{\\footnotesize {_latex_escape(note)}}} \\\\")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return re.sub(r"([_&%$#{}])", r"\\\1", text)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def scatter(runs: pd.DataFrame, metric: str, row: pd.Series, path: Path, target: str = "performance",
            smoke_test: bool = False) -> None:
    """One point per subset, one colour and marker per selection strategy, r and rho in the title."""
    fig = Figure(figsize=(5, 4), dpi=120)
    ax = fig.subplots()
    markers = "osD^vP*Xh<>p"
    for i, (label, group) in enumerate(runs.groupby("subset", sort=True)):
        ax.scatter(group[metric], group[target], label=label, s=40, marker=markers[i % len(markers)])
    ax.set_xlabel(metric)
    ylabel = "IT performance" if target == "performance" else target
    ax.set_ylabel(f"{ylabel} (smoke-test judge: not valid)" if smoke_test else ylabel)
    ax.set_title(f"{metric}\nPearson r = {_fmt(row['pearson_r'])}, Spearman rho = {_fmt(row['spearman_rho'])}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)


def novelsum_heatmap(table: pd.DataFrame, path: Path) -> bool:
    """Pearson r over NovelSum's grid, rows (K, B), columns A; False when the runs hold no grid."""
    grid = table[table["metric"].str.startswith("novelsum_grid[")]
    if grid.empty:
        return False
    keys = grid["metric"].str.extract(r"neighbors=(\d+),density_power=([\d.]+),distance_power=([\d.]+)")
    frame = pd.DataFrame({"K": keys[0].astype(int), "B": keys[1].astype(float), "A": keys[2].astype(float),
                          "r": grid["pearson_r"].to_numpy()})
    pivot = frame.pivot_table(index=["K", "B"], columns="A", values="r")
    fig = Figure(figsize=(4.5, 4), dpi=120)
    ax = fig.subplots()
    im = ax.imshow(pivot.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(pivot.columns)), [f"A={a:g}" for a in pivot.columns])
    ax.set_yticks(range(len(pivot.index)), [f"K={k}, B={b:g}" for k, b in pivot.index])
    for (i, j), v in np.ndenumerate(pivot.to_numpy()):
        ax.text(j, i, _fmt(float(v)), ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="Pearson r")
    ax.set_title("NovelSum grid: correlation with performance", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


def check_runs(runs: pd.DataFrame, source: str = "runs.csv") -> None:
    missing = [c for c in REQUIRED_RUN_COLUMNS if c not in runs]
    if missing:
        raise InputError(f"{source} lacks column(s) {missing}: not a divbench runs table")
    found = sorted(set(runs["schema"])) if "schema" in runs else "none"
    if found != [RUNS_SCHEMA]:
        raise InputError(f"{source} was written by an older divbench (schema {found}, expected {RUNS_SCHEMA}): "
                         "re-run the study; finished stages are reused from the cache")


def write_report(runs: pd.DataFrame, metric_columns: list[str], out_dir: str | Path, *, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Path]:
    """Write runs.csv, table.{csv,md,tex}, scatter_<metric>.png (and the NovelSum grid heatmap) into out_dir."""
    if "schema" not in runs:
        runs = runs.assign(schema=RUNS_SCHEMA)
    check_runs(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = with_paper_values(correlate(runs, metric_columns, n_boot=n_boot, seed=seed))
    paths = {"runs": out / "runs.csv", "table_csv": out / "table.csv", "table_md": out / "table.md",
             "table_tex": out / "table.tex"}
    atomic_write(paths["runs"], runs.to_csv(index=False))
    atomic_write(paths["table_csv"], table.to_csv(index=False))
    note = performance_note(runs)
    atomic_write(paths["table_md"], (f"> **Note:** {note}\n\n" if note else "") + to_markdown(table))
    atomic_write(paths["table_tex"], to_latex(table, note))
    scatter_rows = table[table["base_model"].isin(["all", "mean"])]
    for _, row in scatter_rows.iterrows():
        paths[f"scatter:{row['metric']}"] = out / f"scatter_{slug(row['metric'])}.png"
        scatter(runs, row["metric"], row, paths[f"scatter:{row['metric']}"], smoke_test=note is not None)
    if novelsum_heatmap(scatter_rows, out / "novelsum_grid_heatmap.png"):
        paths["heatmap"] = out / "novelsum_grid_heatmap.png"
    return paths


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Every column of a runs table that holds a registered metric."""
    import metrics

    names = set(metrics.available())
    return [c for c in runs.columns if c.split("[")[0] in names]


def regenerate(runs_csv: str | Path, out_dir: str | Path | None = None, **kw) -> dict[str, Path]:
    """Rebuild every table and figure from a runs.csv alone (no cache, no models)."""
    runs_csv = Path(runs_csv)
    if not runs_csv.exists():
        raise InputError(f"{runs_csv} does not exist: run the study first, or point at its results/<study>/runs.csv")
    runs = pd.read_csv(runs_csv)
    check_runs(runs, str(runs_csv))
    return write_report(runs, metric_columns(runs), out_dir or runs_csv.parent, **kw)
