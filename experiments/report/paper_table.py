"""The paper's table: metric rows in the paper's order, Pearson and Spearman per base model, their average, and
the paper's reported value beside ours with where it comes from.

Rows are the distinct metrics of the main family (:mod:`experiments.report.families`; the NovelSum grid is the heatmap)
in the order of the paper's Table 1 grouping: lexical (TTR, vocd-D), distance (facility location, DistSum-cosine,
Vendi, DistSum-L2, kNN distance), distribution (cluster inertia, radius, log-determinant, partition entropy),
NovelSum last; metrics the paper does not have follow. ``Avg.`` is the mean of every Pearson and Spearman value
of the row, as the paper's average column. Each cell's compact second line is the block-bootstrap 95% interval
and the BH q of the contrast with the reference metric (Williams' test); no interval is printed over fewer than
``resampling.MIN_CI_BLOCKS`` blocks. The paper's values come from ``paper_reported.csv`` with their provenance:
``paper`` (its text or tables), ``figure`` (read off a figure), ``secondary`` (another source quoting it).
The CSV keeps every number in its own column; ``table.csv`` keeps everything else.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.report import families as fam

PAPER_ORDER = list(fam.PAPER_NAMES)
BREAK = "\n"  # the cell's second line, rendered per format
display_name = fam.display_name


def paper_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The table's distinct, defined main-family metrics (any base model's rows), in the paper's order."""
    keep = (table["family"] == fam.MAIN) & fam.counted(table)
    metrics = list(dict.fromkeys(table.loc[keep, "metric"]))
    order = PAPER_ORDER
    rank = {m: (order.index(m.split("[")[0]) if m.split("[")[0] in order else len(order), i)
            for i, m in enumerate(metrics)}
    return pd.DataFrame({"metric": sorted(metrics, key=rank.__getitem__)})


def reported_values(reported: Path) -> pd.DataFrame:
    """paper_reported.csv, with a provenance column (``paper`` where an older file has none)."""
    frame = pd.read_csv(reported)
    if "provenance" not in frame:
        frame["provenance"] = "paper"
    return frame


def paper_table(table: pd.DataFrame, reported: Path, model_names: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per distinct main-family metric: per base model r, rho, their intervals and contrast q-values,
    the average, and the paper's values with provenance and source (the CSV)."""
    names = model_names or {}
    models = [m for m in dict.fromkeys(table["base_model"]) if m != "mean"]
    rows = paper_rows(table)
    by = table.set_index(["base_model", "metric"])
    out = pd.DataFrame({"metric": rows["metric"], "name": rows["metric"].map(display_name)})
    out["same_as"] = [by.loc[(models[0], m), "same_as"] for m in out["metric"]]
    for model in models:
        label = names.get(model, model)
        for col in ("pearson_r", "pearson_ci_low", "pearson_ci_high", "spearman_rho", "spearman_ci_low",
                    "spearman_ci_high", "pearson_contrast_q", "spearman_contrast_q", "n_blocks"):
            out[f"{label}:{col}"] = [by.loc[(model, m), col] if col in by.columns else np.nan for m in out["metric"]]
    stats = [f"{names.get(m, m)}:{c}" for m in models for c in ("pearson_r", "spearman_rho")]
    out["average"] = out[stats].mean(axis=1, skipna=False)
    paper = reported_values(reported)
    for col in ("value", "statistic", "base_model", "provenance", "source"):
        out[f"paper_{col}"] = ["; ".join(str(v) for v in paper.loc[paper["metric"] == m, col])
                               for m in out["metric"]]
    return out.reset_index(drop=True)


def _num(v: float, digits: int = 3) -> str:
    return "undef." if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def display_cells(frame: pd.DataFrame, models: list[str], show_ci: bool, reference: str | None) -> pd.DataFrame:
    """The table as text cells: value, then (second line) interval and contrast q; the paper's values with
    their provenance."""
    cols: dict[str, list[str]] = {"Metric": [_metric_cell(r) for r in frame.itertuples()]}
    for model in models:
        for kind, stat, head in (("pearson", "pearson_r", "Pearson"), ("spearman", "spearman_rho", "Spearman")):
            cells = []
            for _, row in frame.iterrows():
                second = []
                if show_ci:
                    low, high = row[f"{model}:{kind}_ci_low"], row[f"{model}:{kind}_ci_high"]
                    second.append(f"[{_num(low, 2)}, {_num(high, 2)}]")
                q = row.get(f"{model}:{kind}_contrast_q", np.nan)
                if reference and row["metric"] != reference and np.isfinite(q):
                    second.append(f"q={_num(q, 2)}")
                cells.append(_num(row[f"{model}:{stat}"]) + (BREAK + " ".join(second) if second else ""))
            cols[f"{model} {head}"] = cells
    cols["Avg."] = [_num(v) for v in frame["average"]]
    cols["Paper"] = [_paper_cell(r) for _, r in frame.iterrows()]
    return pd.DataFrame(cols)


def _metric_cell(row) -> str:
    aliases = [display_name(a) for a in str(row.same_as).split(";") if a and a != "nan"]
    return row.name + (BREAK + "= " + ", ".join(aliases) if aliases else "")


def _paper_cell(row: pd.Series) -> str:
    values = [v for v in str(row["paper_value"]).split("; ") if v]
    provenance = str(row["paper_provenance"]).split("; ")
    bases = str(row["paper_base_model"]).split("; ")
    stats = str(row["paper_statistic"]).split("; ")
    return "; ".join(f"{v} ({p}: {s}, {b})" for v, p, s, b in zip(values, provenance, stats, bases, strict=False)) \
        or "-"


def to_markdown(cells: pd.DataFrame, note: str) -> str:
    """A GitHub Markdown table; the second line of a cell in <sub> after a line break."""
    def cell(text: str) -> str:
        first, _, second = text.partition(BREAK)
        first, second = (s.replace("|", "\\|") for s in (first, second))
        return first + (f"<br><sub>{second}</sub>" if second else "")

    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(cell(str(v)) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + f"\n\n{note}\n"


def to_latex(cells: pd.DataFrame, note: str) -> str:
    """A booktabs table (no package beyond booktabs): a two-line cell is a nested tabular, its second line
    in \\scriptsize."""
    def cell(text: str) -> str:
        first, _, second = text.partition(BREAK)
        first, second = latex_escape(first), latex_escape(second)
        if not second:
            return first
        return f"\\begin{{tabular}}[t]{{@{{}}c@{{}}}}{first}\\\\{{\\scriptsize {second}}}\\end{{tabular}}"

    spec = "l" + "c" * (len(cells.columns) - 2) + "p{4cm}"
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(latex_escape(c) for c in cells.columns)
             + " \\\\", "\\midrule"]
    lines += [" & ".join(cell(str(v)) for v in row) + " \\\\" for row in cells.itertuples(index=False)]
    lines += ["\\bottomrule", f"\\multicolumn{{{len(cells.columns)}}}{{p{{16cm}}}}{{\\footnotesize "
              f"{latex_escape(note)}}} \\\\", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(cells: pd.DataFrame) -> str:
    """An HTML table; the second line of a cell in <small> on its own line."""
    def cell(text: str) -> str:
        first, _, second = text.partition(BREAK)
        return html.escape(first) + (f"<br><small>{html.escape(second)}</small>" if second else "")

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(str(v))}</td>" for v in row) + "</tr>"
                   for row in cells.itertuples(index=False))
    return f'<table class="paper"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def latex_escape(text: str) -> str:
    text = re.sub(r"([_&%$#{}])", r"\\\1", text)
    text = text.replace("~", r"\textasciitilde{}").replace("^", r"\^{}")
    return text.replace("<", r"$<$").replace(">", r"$>$")
