"""Correlation of every diversity metric with performance, as a table and one scatter plot per metric."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from experiments.cache import atomic_write  # noqa: E402
from metrics.validation import InputError  # noqa: E402

log = logging.getLogger(__name__)
TABLE_COLUMNS = ["metric", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "n"]


def _corr(fn, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # correlation undefined, not 0
        return float("nan"), float("nan")
    res = fn(x, y)
    return float(res.statistic), float(res.pvalue)


def correlate(runs: pd.DataFrame, metric_columns: list[str], target: str = "performance") -> pd.DataFrame:
    """Pearson and Spearman (scipy.stats) of each metric column against ``target``; NaN where undefined."""
    if len(runs) < 3:
        raise InputError(f"correlation needs at least 3 subsets, the study has {len(runs)}: add subsets or seeds")
    y = runs[target].to_numpy(float)
    rows = []
    for col in metric_columns:
        x = runs[col].to_numpy(float)
        r, rp = _corr(stats.pearsonr, x, y)
        rho, sp = _corr(stats.spearmanr, x, y)
        rows.append({"metric": col, "pearson_r": r, "pearson_p": rp, "spearman_rho": rho, "spearman_p": sp,
                     "n": len(x)})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values("pearson_r", ascending=False,
                                                                  na_position="last", ignore_index=True)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "undefined" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def to_markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def scatter(runs: pd.DataFrame, metric: str, row: pd.Series, path: Path, target: str = "performance") -> None:
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for label, group in runs.groupby("subset", sort=True):
        ax.scatter(group[metric], group[target], label=label, s=36)
    ax.set_xlabel(metric)
    ax.set_ylabel(target)
    ax.set_title(f"{metric}\nPearson r = {_fmt(row['pearson_r'])}, Spearman rho = {_fmt(row['spearman_rho'])}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_report(runs: pd.DataFrame, metric_columns: list[str], out_dir: str | Path) -> dict[str, Path]:
    """Write runs.csv, table.csv, table.md and scatter_<metric>.png into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = correlate(runs, metric_columns)
    paths = {"runs": out / "runs.csv", "table_csv": out / "table.csv", "table_md": out / "table.md"}
    atomic_write(paths["runs"], runs.to_csv(index=False))
    atomic_write(paths["table_csv"], table.to_csv(index=False))
    atomic_write(paths["table_md"], to_markdown(table))
    for _, row in table.iterrows():
        paths[f"scatter:{row['metric']}"] = out / f"scatter_{slug(row['metric'])}.png"
        scatter(runs, row["metric"], row, paths[f"scatter:{row['metric']}"])
    return paths
