"""Correlation of every diversity metric with performance: tables (Markdown, CSV, LaTeX), the paper's table, one
HTML page and figures.

The statistics are :mod:`experiments.report.correlation`'s (block resampling, metric families, contrasts with
the reference metric, covariates, decision accuracy). ``table.csv`` holds every column for every metric name;
``table.md`` / ``table.tex`` the distinct metrics of the main family with the columns a reader needs;
``paper_table.{md,tex,csv}`` the paper's layout (:mod:`experiments.report.paper_table`); ``report.html`` all of
it on one self-contained page (:mod:`experiments.report.html_report`); ``sensitivity.csv`` each metric's r with
each block left out; ``covariates.csv`` each covariate's own correlation with performance.

The Markdown table is written by hand (pandas' ``to_markdown`` needs ``tabulate`` and pads cells, which makes
rows hard to grep); the LaTeX table is pandas' ``Styler.to_latex``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from divcore.errors import InputError
from divcore.io import atomic_write, make_temp_dir, read_json, remove_stale_temps
from divcore.ownership import check_output_dir, publish_dir
from divcore.registry import did_you_mean
from experiments.report import decisions as dec
from experiments.report import families as fam
from experiments.report import figures
from experiments.report import html_report as hr
from experiments.report import paper_table as pt
from experiments.report import resampling as rs
from experiments.report import stats as st
from experiments.report.correlation import (  # noqa: F401  (public names)
    BASE_COLUMNS,
    CONTROLS,
    PROFILE_COVARIATES,
    complete,
    correlate,
    numeric,
    resolve_covariates,
    variant_contrasts,
)
from experiments.report.figures import fmt, novelsum_heatmap, scatter  # noqa: F401  (public since the first report)
from experiments.report.stats import bootstrap_ci  # noqa: F401

log = logging.getLogger(__name__)
RUNS_SCHEMA = 1
REQUIRED_RUN_COLUMNS = ("subset", "selector", "seed", "performance")
STATS = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}
TABLE_COLUMNS = BASE_COLUMNS  # the columns every table has (plus decision, covariate, contrast, family ones)
PAPER_REPORTED = Path(__file__).with_name("paper_reported.csv")
PROXY_LABEL = "-NLL of GPT-4 Turbo reference answers (judge-free proxy for instruction-following quality)"


REPLICATE_COLUMNS = ("n_replicates", "performance_sd", "performance_replicates", "train_seeds")


def aggregate_replicates(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (base_model, subset, seed) from one row per training replicate (``train_seed``).

    A numeric column that differs across a subset's replicates (performance, benchmark scores) becomes the
    replicate mean (a missing replicate value makes it missing, not skipped); the rest are the subset's own.
    Adds ``n_replicates``, ``performance_sd`` (SD over replicates, ddof=1; NaN with one replicate),
    ``performance_replicates`` and ``train_seeds`` (JSON lists, in training-seed order).
    """
    keys = [c for c in ("base_model", "subset", "seed") if c in runs]
    rows = []
    for _, group in runs.groupby(keys, sort=False, dropna=False):
        if "train_seed" in group:
            group = group.sort_values("train_seed", kind="stable")
        row = group.iloc[0].to_dict()
        for col in group.columns:
            values = group[col]
            varies = values.nunique(dropna=False) > 1
            if varies and pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                row[col] = float(values.astype(float).mean(skipna=False))
        perf = group["performance"].astype(float)
        row |= {"n_replicates": len(group), "performance_sd": float(perf.std(ddof=1)) if len(group) > 1 else np.nan,
                "performance_replicates": json.dumps(perf.tolist()),
                "train_seeds": json.dumps([int(v) for v in group["train_seed"]]) if "train_seed" in group else ""}
        row.pop("train_seed", None)
        rows.append(row)
    out = pd.DataFrame(rows)
    first = [c for c in out.columns if c not in REPLICATE_COLUMNS]
    at = first.index("performance") + 1
    return out[first[:at] + list(REPLICATE_COLUMNS) + first[at:]]


def to_markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def with_paper_values(table: pd.DataFrame, reported: Path = PAPER_REPORTED) -> pd.DataFrame:
    """Add the paper's reported figures beside ours, each marked with its provenance (metric base name match)."""
    paper = pt.reported_values(reported)
    lookup: dict[str, list[str]] = {}
    for r in paper.itertuples():
        lookup.setdefault(r.metric, []).append(f"{r.value:g} ({r.provenance}: {r.statistic}, {r.base_model})")
    base = table["metric"].str.split("[", regex=False).str[0]
    return table.assign(paper_reported=["; ".join(lookup.get(m, [])) for m in base])


def performance_is_proxy(runs: pd.DataFrame) -> bool:
    """Whether performance is the judge-free reference likelihood (``performance_source`` names only it)."""
    return "performance_source" in runs and bool(
        runs["performance_source"].astype(str).str.fullmatch(r"(raw:)?neg_reference_nll").all())


def performance_label(runs: pd.DataFrame) -> str:
    """The y-axis / table label of performance: what it is, and a warning when it is not a benchmark number."""
    if performance_is_proxy(runs):
        return f"IT performance proxy: {PROXY_LABEL}"
    if performance_note(runs):
        return "IT performance (smoke-test judge: not valid)"
    return "IT performance"


def performance_note(runs: pd.DataFrame) -> str | None:
    """A note for the table and figures saying what performance is when it is not a real benchmark number: the
    judge-free reference likelihood, or a smoke-test judge's verdicts."""
    smoke = "judge_smoke_test" in runs and runs["judge_smoke_test"].astype(bool).any()
    if performance_is_proxy(runs):
        note = (f"IT performance here is {PROXY_LABEL}; it is not an AlpacaEval or MT-Bench score.")
        if smoke:
            note += " The smoke-test judge's columns in runs.csv only check that the judged path runs."
        return note
    if not smoke:
        return None
    judges = sorted({str(j).split(" [")[0] for j in runs.loc[runs["judge_smoke_test"].astype(bool), "judge"]})
    return (f"IT performance here comes from a smoke-test judge ({'; '.join(judges)}): it exercises the "
            "evaluation code path and is not a valid benchmark number.")


def judge_note(runs: pd.DataFrame) -> str | None:
    """A note when scores come from a judge other than the published leaderboards' (``judge_leaderboard_note``
    in runs.csv), so they are not compared with the leaderboards by mistake."""
    if "judge_leaderboard_note" not in runs:
        return None
    differing = sorted({str(n) for n in runs["judge_leaderboard_note"].dropna() if str(n)})
    return " ".join(f"Scores {n}." for n in differing) or None


def report_note(runs: pd.DataFrame) -> str | None:
    """Everything the table and figures must say about what the performance numbers are."""
    return " ".join(n for n in (performance_note(runs), judge_note(runs)) if n) or None


def to_latex(table: pd.DataFrame, note: str | None = None) -> str:
    """A booktabs table of r, rho and tau (pandas' Styler); the best value of each column in bold."""
    cols = {"base_model": "Base model", "metric": "Metric", "pearson_r": "Pearson $r$",
            "spearman_rho": "Spearman $\\rho$", "kendall_tau": "Kendall $\\tau$"}
    frame = table[list(cols)].rename(columns=cols)
    styler = (frame.style.hide(axis="index")
              .format(precision=3, na_rep="undef.", subset=list(cols.values())[2:])
              .format(escape="latex", subset=["Base model", "Metric"])
              .highlight_max(subset=list(cols.values())[2:], props="textbf:--rwrap;"))
    latex = styler.to_latex(hrules=True, column_format="ll" + "r" * (len(cols) - 2))
    if note:
        foot = f"\\multicolumn{{{len(cols)}}}{{l}}{{\\footnotesize {_latex_escape(note)}}} \\\\\n"
        latex = latex.replace("\\end{tabular}", foot + "\\end{tabular}")
    return latex


def _latex_escape(text: str) -> str:
    return re.sub(r"([_&%$#{}])", r"\\\1", text)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def check_runs(runs: pd.DataFrame, source: str = "runs.csv") -> None:
    missing = [c for c in REQUIRED_RUN_COLUMNS if c not in runs]
    if missing:
        raise InputError(f"{source} lacks column(s) {missing}: not a divbench runs table")
    found = sorted(set(runs["schema"])) if "schema" in runs else "none"
    if found != [RUNS_SCHEMA]:
        raise InputError(f"{source} was written by an older divbench (schema {found}, expected {RUNS_SCHEMA}): "
                         "re-run the study; finished stages are reused from the cache")
    keys = [c for c in ("base_model", "subset", "seed") if c in runs]
    dup = runs[runs.duplicated(keys, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise InputError(f"{source}: {len(dup)} rows share ({', '.join(keys)}), first "
                         f"{tuple(first[k] for k in keys)}: each subset must appear once per base model "
                         "(training replicates belong in one row, averaged; see finetune.seeds)")


def noise_floors(runs: pd.DataFrame, table: pd.DataFrame, alpha: float = 0.05) -> dict[str, Any]:
    """The noise floor of each base model (flat when there is one) plus the metrics whose correlation excludes 0
    after Benjamini-Hochberg (q < alpha), by test."""
    several = "base_model" in runs and runs["base_model"].nunique() > 1
    groups = list(runs.groupby("base_model", sort=True)) if several else [("all", runs)]
    out = {}
    for name, group in groups:
        rows = table[table["base_model"] == name]
        floor = st.noise_floor_of(group)
        floor["significant_after_bh"] = {
            col: rows.loc[rows[col] < alpha, "metric"].tolist()
            for col in ("pearson_q", "spearman_q", "pearson_q_perm", "spearman_q_perm")}
        floor["alpha"] = alpha
        if floor["within_sd"] is None:
            floor["note"] = "one training replicate per subset: set finetune.seeds to measure the noise floor"
        out[str(name)] = floor
    return next(iter(out.values())) if len(out) == 1 else {"base_models": out}


def warn_bad_cells(runs: pd.DataFrame, columns: list[str], source: str = "runs.csv") -> None:
    """Name every missing or non-numeric cell of the correlated columns: their pairs are left out (each
    correlation uses its complete pairs, and its ``n`` says how many), never silently poison a column."""
    for col in columns:
        bad = np.flatnonzero(~np.isfinite(numeric(runs[col])))
        if bad.size:
            where = [f"row {i + 2} ({runs['subset'].iloc[i]}, seed {runs['seed'].iloc[i]}): {runs[col].iloc[i]!r}"
                     for i in bad[:5]]
            log.warning("%s: column %s has %d missing or non-numeric cell(s), left out of its correlations: %s",
                        source, col, bad.size, "; ".join(where))


RUN_FILES = ("timings.json", "study_config.json")  # the run's own records, kept when its report is rebuilt in place


def check_out_dir(out: Path, key: str = "out", inputs: dict[str, Any] | None = None) -> None:
    """A report replaces divbench's files in its folder; the folder must hold no other file (divcore.ownership)."""
    check_output_dir(out, key, legacy=RESULTS_FILES, inputs=inputs, what="results folder")


REPORT_FILES = ("runs.csv", "variants.csv", "table.csv", "table.md", "table.tex", "noise_floor.json", "sensitivity.csv",
                "covariates.csv", "paper_table.csv", "paper_table.md", "paper_table.tex", "report.html", "forest.png",
                "novelsum_grid_heatmap.png")


# A results folder's files that are divbench's by name (divcore.ownership's legacy names, also in a folder with a
# manifest): the report's files, a dry run's plan.csv and the study's records. In a folder without a manifest
# (written before manifests existed), anything else means the folder is not divbench's.
RESULTS_FILES = (*REPORT_FILES, "scatter_*.png", "plan.csv", *RUN_FILES)


def written_by_report(name: str) -> bool:
    """Whether a file of a results folder is the report's (or the study's records it carries): rebuilt, never
    kept. Everything else there (a README, another tool's JSON, a sensitivity report's folder) is kept."""
    return name in REPORT_FILES or name in RUN_FILES or bool(re.fullmatch(r"scatter_.*\.png", name))


def write_report(runs: pd.DataFrame, metric_columns: list[str], out_dir: str | Path, *, n_boot: int = 10_000,
                 seed: int = 0, n_perm: int = 9999, reference_metric: str | None = None, alpha: float = 0.05,
                 block: str | None = "selector", covariates: list[str] | None = None,
                 untuned_performance: float | None = None, extra: dict[str, str] | None = None,
                 key: str = "out") -> dict[str, Path]:
    """Write runs.csv, table.{csv,md,tex}, paper_table.{csv,md,tex}, report.html, noise_floor.json,
    sensitivity.csv, covariates.csv, scatter_<metric>.png, forest.png (and the NovelSum grid heatmap), plus the
    ``extra`` {file name: text} files, into a temporary folder beside out_dir, then swap it in: no file of an
    earlier report (a plot of a metric no longer computed) survives, files divbench did not write in a divbench
    results folder (a README, another tool's output, a sensitivity report's folder) stay untouched, a folder that
    is not divbench's is refused (divcore.ownership), and a kill leaves the previous report. Missing or
    non-numeric cells are named in a warning and left out pairwise. ``key``: the config key naming out_dir."""
    if "schema" not in runs:
        runs = runs.assign(schema=RUNS_SCHEMA)
    check_runs(runs)
    warn_bad_cells(runs, ["performance", *metric_columns])
    out = Path(out_dir)
    check_out_dir(out, key)
    rs.block_column(runs, block)  # a bad block name fails before anything is written
    remove_stale_temps(out.parent, depth=1)
    numbers = runs.assign(**{c: numeric(runs[c]) for c in ["performance", *metric_columns]})
    settings = ReportSettings(n_boot=n_boot, seed=seed, n_perm=n_perm, reference=reference_metric, alpha=alpha,
                              block=block, covariates=covariates, untuned=untuned_performance,
                              config=(extra or {}).get("study_config.json"))
    tmp = make_temp_dir(out.parent, out.name)
    try:
        paths = _write_report_files(numbers, metric_columns, tmp, settings)
        atomic_write(paths["runs"], runs.to_csv(index=False))  # as given, text cells included
        for name, text in (extra or {}).items():
            atomic_write(tmp / name, text)
        publish_dir(tmp, out, "report", legacy=RESULTS_FILES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {key: out / p.relative_to(tmp) for key, p in paths.items()}


@dataclass(frozen=True)
class ReportSettings:
    """What the statistics and the page are computed with (``report`` config group)."""

    n_boot: int = 10_000
    seed: int = 0
    n_perm: int = 9999
    reference: str | None = None
    alpha: float = 0.05
    block: str | None = "selector"
    covariates: list[str] | None = None
    untuned: float | None = None
    config: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"n_boot": self.n_boot, "seed": self.seed, "n_perm": self.n_perm, "reference_metric": self.reference,
                "alpha": self.alpha, "block": self.block, "covariates": self.covariates,
                "untuned_performance": self.untuned}


def _write_report_files(runs: pd.DataFrame, metric_columns: list[str], out: Path,
                        settings: ReportSettings) -> dict[str, Path]:
    if _replicates_of_one_subset(runs):
        return _write_noise_floor_only(runs, out)
    table = with_paper_values(correlate(runs, metric_columns, n_boot=settings.n_boot, seed=settings.seed,
                                        n_perm=settings.n_perm, reference=settings.reference, block=settings.block,
                                        covariates=settings.covariates))
    reference = settings.reference if "pearson_contrast_p" in table else None
    floor = noise_floors(runs, table, settings.alpha)
    labels = rs.block_labels(runs, settings.block)
    notes = {"performance": report_note(runs), "statistics": statistics_note(runs, table, settings, labels)}
    names = model_names(runs)
    show_ci = int(table["n_blocks"].max()) >= rs.MIN_CI_BLOCKS
    paths = {"runs": out / "runs.csv", "noise_floor": out / "noise_floor.json"} | {
        name.replace(".", "_"): out / name for name in ("table.csv", "table.md", "table.tex", "sensitivity.csv",
                                                        "covariates.csv", "paper_table.csv", "paper_table.md",
                                                        "paper_table.tex")}
    atomic_write(paths["runs"], runs.to_csv(index=False))
    atomic_write(paths["table_csv"], table.to_csv(index=False))
    atomic_write(paths["table_md"], table_markdown(table, notes, names))
    atomic_write(paths["table_tex"], to_latex(main_rows(table).assign(base_model=lambda t: t["base_model"].map(
        lambda m: names.get(m, m))), " ".join(n for n in notes.values() if n)))
    atomic_write(paths["noise_floor"], json.dumps(floor, indent=2))
    sensitivity = sensitivity_table(runs, metric_columns, labels)
    atomic_write(paths["sensitivity_csv"], sensitivity.to_csv(index=False))
    covs = covariate_table(runs, table, settings)
    atomic_write(paths["covariates_csv"], covs.to_csv(index=False))
    if "variant" in runs and runs["variant"].nunique() > 1:  # runs of a sweep's jobs: their differences
        paths["variants_csv"] = out / "variants.csv"
        variants = variant_contrasts(runs, metric_columns, n_boot=settings.n_boot, seed=settings.seed,
                                     block=settings.block)
        atomic_write(paths["variants_csv"], variants.to_csv(index=False))
    paper = pt.paper_table(table, PAPER_REPORTED, names)
    atomic_write(paths["paper_table_csv"], paper.to_csv(index=False))
    models = [names.get(m, m) for m in dict.fromkeys(table["base_model"]) if m != "mean"]
    cells = pt.display_cells(paper, models, show_ci, reference)
    paper_note = paper_table_note(runs, table, settings, reference, show_ci, notes)
    atomic_write(paths["paper_table_md"], pt.to_markdown(cells, paper_note))
    atomic_write(paths["paper_table_tex"], pt.to_latex(cells, paper_note))
    figure_paths, captions = write_figures(runs, table, out, settings.alpha, reference=reference, show_ci=show_ci,
                                           untuned=settings.untuned)
    paths |= figure_paths
    paths["report_html"] = out / "report.html"
    atomic_write(paths["report_html"], report_page(runs, table, floor, sensitivity, covs, cells, paper_note, notes,
                                                    figure_paths, captions, settings))
    return paths


def _replicates_of_one_subset(runs: pd.DataFrame) -> bool:
    """A noise-floor run (experiment=noise_floor): one subset per base model, trained several times."""
    per_model = runs.groupby("base_model").size() if "base_model" in runs else pd.Series([len(runs)])
    return bool((per_model == 1).all()) and "n_replicates" in runs and bool((runs["n_replicates"] >= 2).all())


def _write_noise_floor_only(runs: pd.DataFrame, out: Path) -> dict[str, Path]:
    """One subset has no correlation to report: runs.csv and the training noise (noise_floor.json) only."""
    floor = noise_floors(runs, pd.DataFrame(columns=TABLE_COLUMNS))
    log.info("one subset with %s training replicates: noise floor only, no correlation table",
             runs["n_replicates"].tolist())
    out.mkdir(parents=True, exist_ok=True)
    paths = {"runs": out / "runs.csv", "noise_floor": out / "noise_floor.json"}
    atomic_write(paths["runs"], runs.to_csv(index=False))
    atomic_write(paths["noise_floor"], json.dumps(floor, indent=2))
    return paths


def model_names(runs: pd.DataFrame) -> dict[str, str]:
    """Display names of the table's base-model labels: a single model's ``all`` is the model itself."""
    if "base_model" in runs and runs["base_model"].nunique() == 1:
        return {"all": str(runs["base_model"].iloc[0])}
    return {"mean": "mean over base models and variants" if "variant" in runs else "mean over base models"}


def main_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows a reader's table shows: each distinct, defined metric of the main family once."""
    keep = (table["family"] == fam.MAIN) & fam.counted(table)
    return table[keep]


MD_COLUMNS = {"base_model": None, "metric": None, "pearson_r": None, "pearson_ci": "pearson",
              "pearson_p_perm": None, "pearson_q_perm": None, "spearman_rho": None, "spearman_ci": "spearman",
              "spearman_q_perm": None, "kendall_tau": None, "pearson_contrast_diff": None, "pearson_contrast_p": None,
              "pearson_contrast_q": None, "pearson_contrast_p_boot": None, "decision_accuracy": None,
              "decision_accuracy_ci": "decision_accuracy", "n": None, "n_blocks": None}


def _interval_cells(rows: pd.DataFrame, stem: str) -> list[str]:
    return [f"[{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) else "undefined"
            for lo, hi in zip(rows[f"{stem}_ci_low"], rows[f"{stem}_ci_high"], strict=True)]


def table_markdown(table: pd.DataFrame, notes: dict[str, str | None], names: dict[str, str]) -> str:
    """table.md: the distinct metrics of the main family with the columns a reader needs (table.csv has all),
    the other names of each metric, the constant columns and the notes."""
    rows = main_rows(table)
    shown = pd.DataFrame({"base_model": rows["base_model"].map(lambda m: names.get(m, m))}, index=rows.index)
    for col, stem in MD_COLUMNS.items():
        if stem is not None:
            shown[col] = _interval_cells(rows, stem)
        elif col in rows and col != "base_model":
            shown[col] = rows[col]
    for col in rows:
        if col.startswith("pearson_partial_") and rows[col].notna().any():
            shown[col] = rows[col]
    parts = [f"> **Note:** {notes['performance']}\n"] if notes.get("performance") else []
    parts.append(to_markdown(shown))
    aliases = rows.loc[rows["same_as"].astype(str).str.len() > 0, ["metric", "same_as"]].drop_duplicates()
    if not aliases.empty:
        parts.append("Same values under other names (reported once, counted once in every correction): "
                     + "; ".join(f"`{m}` = " + ", ".join(f"`{a}`" for a in s.split(";"))
                                 for m, s in aliases.itertuples(index=False)) + ".\n")
    constant = sorted(set(table.loc[table["constant"].astype(bool), "metric"]))
    if constant:
        parts.append("Constant over the subsets, hence undefined and in no correction: "
                     + ", ".join(f"`{m}`" for m in constant) + ".\n")
    if (table["family"] == fam.GRID).any():
        parts.append("The NovelSum grid is a family of its own (its q-values are corrected within it): "
                     "`novelsum_grid_heatmap.png`, all columns in `table.csv`.\n")
    parts.append(notes["statistics"] + "\n")
    return "\n".join(parts)


def statistics_note(runs: pd.DataFrame, table: pd.DataFrame, settings: ReportSettings, labels: np.ndarray) -> str:
    """How the intervals, p- and q-values were computed, in words a reader of the table needs."""
    column = rs.block_column(runs, settings.block)
    n_blocks, n_rows = len(set(labels)), len(labels)
    unit = (f"whole blocks of subsets resampled ({n_blocks} blocks = values of runs.csv `{column}`, "
            f"{n_rows} subsets)" if column and rs.has_repeated_blocks(labels) else f"{n_rows} subsets resampled")
    mc = 1.96 * np.sqrt(0.05 * 0.95 / max(settings.n_perm, 1))
    text = (f"Intervals: 95% percentile bootstrap, B = {settings.n_boot:,} resamples, {unit}, seed {settings.seed}. "
            f"Permutation p (`*_p_perm`): two-sided as scipy.stats.permutation_test defines it, twice the smaller "
            f"one-sided tail, each tail (1 + k) / (1 + {settings.n_perm:,}) when sampled and exact when every "
            f"pairing fits in {settings.n_perm:,}; "
            + ("whole blocks are permuted, so the test is on the block means. " if column and
               rs.has_repeated_blocks(labels) else "")
            + f"Monte Carlo error of a p near 0.05: +-{mc:.4f}. "
            "q: Benjamini-Hochberg within each metric family (main; NovelSum grid), every distinct metric counted "
            "once. ")
    if "pearson_contrast_p" in table:
        text += (f"Contrasts (`*_contrast_*`) against `{settings.reference}`: difference of correlations, "
                 "Williams' t (df = n - 3) and Steiger's z for dependent correlations sharing performance, Holm "
                 "(`_p_holm`) and BH (`_q`) over the family's other distinct metrics; `_p_boot` is the "
                 "block-bootstrap p of the difference (twice the smaller share of resampled differences beyond 0). ")
    text += ("Decision accuracy: the share of subset pairs whose performance differs beyond the training noise "
             f"(|dy| > {dec.Z} x pooled replicate SE of the difference) that the metric orders the same way "
             "(ties half; chance 0.5).")
    return text


def paper_table_note(runs: pd.DataFrame, table: pd.DataFrame, settings: ReportSettings, reference: str | None,
                     show_ci: bool, notes: dict[str, str | None]) -> str:
    """The paper table's legend."""
    second = []
    if show_ci:
        second.append("the 95% block-bootstrap interval")
    else:
        second.append(f"no interval ({int(table['n_blocks'].max())} resampling units, fewer than "
                      f"{rs.MIN_CI_BLOCKS}: percentile intervals over so few run to +-1)")
    if reference:
        second.append(f"q = BH-adjusted p of Williams' test against {reference} over the family's metrics")
    text = ("Second line: " + "; ".join(second) + ". Avg. = mean of the row's Pearson and Spearman values. "
            "Paper: the value the paper reports, with its provenance (paper: its text or tables; figure: read off "
            "a figure; secondary: another source quoting it; experiments/paper_reported.csv has each source).")
    return " ".join(n for n in (notes.get("performance"), text) if n)


def sensitivity_table(runs: pd.DataFrame, metric_columns: list[str], labels: np.ndarray) -> pd.DataFrame:
    """sensitivity.csv: every metric's r and rho with each block left out, per base model, beside its full r."""
    several = "base_model" in runs and runs["base_model"].nunique() > 1
    groups = runs.groupby("base_model", sort=True).indices.items() if several else [("all", np.arange(len(runs)))]
    frames = []
    for name, idx in groups:
        part = runs.iloc[idx].reset_index(drop=True)
        frame = rs.leave_one_block_out(part, metric_columns, labels[idx])
        full = {c: _full_r(part, c) for c in metric_columns}
        frames.append(frame.assign(base_model=name, pearson_r_all=frame["metric"].map(full)))
    out = pd.concat(frames, ignore_index=True)
    return out[["base_model", "metric", "left_out", "n", "pearson_r", "spearman_rho", "pearson_r_all"]]


def _full_r(runs: pd.DataFrame, col: str) -> float:
    x, y = numeric(runs[col]), numeric(runs["performance"])
    ok = np.isfinite(x) & np.isfinite(y)
    return st.correlation("pearson", x[ok], y[ok])[0] if ok.sum() >= 3 else np.nan


def covariate_table(runs: pd.DataFrame, table: pd.DataFrame, settings: ReportSettings) -> pd.DataFrame:
    """covariates.csv: each covariate's own Pearson r and Spearman rho with performance (block-bootstrap interval),
    per base model: how much of what a metric tracks a confound could carry alone."""
    columns = [c for c in CONTROLS.values() if c in runs] + [
        c for c in (settings.covariates if settings.covariates is not None else PROFILE_COVARIATES)
        if c in runs and c not in CONTROLS.values()]
    if not columns:
        return pd.DataFrame(columns=["base_model", "covariate", "pearson_r", "pearson_ci_low", "pearson_ci_high",
                                     "spearman_rho", "n"])
    frame = runs[["subset", "selector", "seed", "performance", *columns]
                 + (["base_model"] if "base_model" in runs else [])]
    if "performance_replicates" in runs:
        frame = frame.assign(performance_replicates=runs["performance_replicates"])
    cov = correlate(frame, columns, n_boot=settings.n_boot, seed=settings.seed, n_perm=0, block=settings.block,
                    covariates=[])
    out = cov[["base_model", "metric", "pearson_r", "pearson_ci_low", "pearson_ci_high", "spearman_rho",
               "spearman_ci_low", "spearman_ci_high", "n"]].rename(columns={"metric": "covariate"})
    return out.reset_index(drop=True)


def write_figures(runs: pd.DataFrame, table: pd.DataFrame, out: Path, alpha: float = 0.05, *,
                  reference: str | None = None, show_ci: bool = True, untuned: float | None = None,
                  scatters: Sequence[str] | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """A scatter per distinct metric of the main family (one panel per base model; only those named in
    ``scatters`` when given), the forest plot and the NovelSum grid heatmap; returns their paths and captions."""
    ylabel = short_performance_label(runs)
    names = model_names(runs)
    caption = None if show_ci else figures.no_ci_caption(int(table["n_blocks"].max()))
    untuned = untuned_value(runs, untuned)
    paths, captions = {}, {}
    models = main_rows(table[table["base_model"] != "mean"])
    for metric, rows in models.groupby("metric", sort=False):
        if scatters is not None and metric not in scatters:
            continue
        key = f"scatter:{metric}"
        paths[key] = out / f"scatter_{slug(metric)}.png"
        figures.scatter(runs, metric, rows, paths[key], ylabel=ylabel, model_names=names, untuned=untuned,
                        show_ci=show_ci, caption=caption)
        captions[key] = (f"{metric} against performance: subset means, training replicates as dots, fits with and "
                         "without the duplicate arm." + (f" {caption}" if caption else ""))
    paths["forest"] = out / "forest.png"
    what = "IT performance proxy (-NLL of reference answers)" if performance_is_proxy(runs) else "IT performance"
    interval = "95% interval resampling whole blocks" if show_ci else "no interval"
    figures.forest(table, paths["forest"], xlabel=f"Pearson r with {what}; {interval}", q_alpha=alpha,
                   model_names=names, reference=reference, show_ci=show_ci, caption=caption)
    captions["forest"] = ("Every distinct metric's Pearson r per base model." + (f" {caption}" if caption else ""))
    summary = table[table["base_model"].isin(["all", "mean"])]
    if figures.novelsum_heatmap(summary, out / "novelsum_grid_heatmap.png", show_ci=show_ci, caption=caption):
        paths["heatmap"] = out / "novelsum_grid_heatmap.png"
        captions["heatmap"] = "NovelSum's grid: Pearson r per (neighbours K, density power B, distance power A)."
    return paths, captions


def short_performance_label(runs: pd.DataFrame) -> str:
    """The y-axis label: what performance is, in at most two short lines (the page and table notes say more)."""
    if performance_is_proxy(runs):
        return "IT performance proxy: -NLL of GPT-4 Turbo reference answers"
    return performance_label(runs)


def untuned_value(runs: pd.DataFrame, untuned: float | None) -> float | None:
    """The untuned base model's performance: the configured value, else runs.csv's ``untuned_performance``."""
    if untuned is not None:
        return float(untuned)
    if "untuned_performance" in runs:
        values = numeric(runs["untuned_performance"])
        values = values[np.isfinite(values)]
        return float(values[0]) if values.size else None
    return None


def report_page(runs: pd.DataFrame, table: pd.DataFrame, floor: dict, sensitivity: pd.DataFrame,
                covariates: pd.DataFrame, cells: pd.DataFrame, paper_note: str, notes: dict[str, str | None],
                figure_paths: dict[str, Path], captions: dict[str, str], settings: ReportSettings) -> str:
    """report.html (:mod:`experiments.report.html_report`)."""
    names = model_names(runs)
    rows = main_rows(table).assign(base_model=lambda t: t["base_model"].map(lambda m: names.get(m, m)))
    sections = [("Design", design_html(runs, table, settings))]
    if notes.get("performance"):
        sections.append(("What performance is", hr.paragraph(notes["performance"], "note")))
    sections.append(("The paper's table", pt.to_html(cells) + hr.paragraph(paper_note)))
    contrast = [c for c in ("base_model", "metric", "pearson_r", "pearson_contrast_diff", "pearson_diff_ci_low",
                            "pearson_diff_ci_high", "pearson_contrast_williams_t", "pearson_contrast_steiger_z",
                            "pearson_contrast_p", "pearson_contrast_p_holm", "pearson_contrast_q",
                            "pearson_contrast_p_boot") if c in rows]
    if "pearson_contrast_p" in rows:
        sections.append((f"Contrasts with {settings.reference}", hr.frame_html(rows[contrast])))
    decision = ["base_model", "metric", "decision_accuracy", "decision_accuracy_ci_low", "decision_accuracy_ci_high",
                "n_decisions"]
    sections.append(("Decision accuracy", hr.frame_html(rows[decision].sort_values(
        ["base_model", "decision_accuracy"], ascending=[True, False]))))
    partial = [c for c in rows if c.startswith("pearson_partial_") and rows[c].notna().any()]
    if not covariates.empty:
        sections.append(("Covariates", hr.paragraph("Each covariate's own correlation with performance:")
                         + hr.frame_html(covariates.assign(base_model=covariates["base_model"].map(
                             lambda m: names.get(m, m))))
                         + hr.paragraph("Partial Pearson r of each metric:")
                         + hr.frame_html(rows[["base_model", "metric", "pearson_r", *partial]])))
    sections.append(("Leave one block out", sensitivity_html(sensitivity, rows)))
    sections.append(("Noise floor", f"<pre>{hr.html.escape(json.dumps(floor, indent=2))}</pre>"))
    figs = [hr.figure_html(figure_paths[k], captions[k]) for k in ("forest", "heatmap") if k in figure_paths]
    figs += [hr.figure_html(p, captions[k]) for k, p in figure_paths.items() if k.startswith("scatter:")]
    sections.append(("Figures", "".join(figs)))
    sections.append(("Statistics", hr.paragraph(notes["statistics"])))
    sections.append(("Full table", "<details><summary>every column of table.csv</summary>"
                     + hr.frame_html(table) + "</details>"))
    study_config = ("<details><summary>the study's resolved configuration (study_config.json)</summary>"
                    + hr.config_html(settings.config) + "</details>") if settings.config else ""
    sections.append(("Configuration", hr.paragraph("This report (report config group):")
                     + hr.config_html(settings.as_dict()) + study_config))
    study = json.loads(settings.config).get("study", "") if settings.config else ""
    return hr.render(f"divbench report{f': {study}' if study else ''}", sections)


def design_html(runs: pd.DataFrame, table: pd.DataFrame, settings: ReportSettings) -> str:
    """The study design in one small table: subsets, selectors, blocks, base models, replicates, metrics."""
    labels = rs.block_labels(runs, settings.block)
    reps = runs["n_replicates"].astype(int).unique().tolist() if "n_replicates" in runs else [1]
    distinct = table.drop_duplicates("metric")
    facts = {"subsets": len(runs) // max(1, runs["base_model"].nunique() if "base_model" in runs else 1),
             "selectors": ", ".join(sorted(runs["selector"].astype(str).unique())),
             "resampling blocks": f"{len(set(labels))} (report.block = {settings.block})",
             "base models": ", ".join(sorted(runs["base_model"].astype(str).unique())) if "base_model" in runs
             else "one (unnamed)",
             "training replicates per subset": ", ".join(map(str, sorted(reps))),
             "performance": str(runs["performance_source"].iloc[0]) if "performance_source" in runs else "performance",
             "metric columns": f"{len(distinct)} ({int(fam.counted(distinct).sum())} distinct and defined)"}
    return hr.frame_html(pd.DataFrame({"": list(facts), "value": list(facts.values())}))


def sensitivity_html(sensitivity: pd.DataFrame, rows: pd.DataFrame) -> str:
    """Per distinct metric: its r, and the smallest and largest r with one block left out (and which block)."""
    part = sensitivity[sensitivity["metric"].isin(set(rows["metric"]))].dropna(subset=["pearson_r"])
    if part.empty:
        return hr.paragraph("no leave-one-block-out correlation is defined")
    lo = part.loc[part.groupby(["base_model", "metric"])["pearson_r"].idxmin()]
    hi = part.loc[part.groupby(["base_model", "metric"])["pearson_r"].idxmax()]
    summary = lo[["base_model", "metric", "pearson_r_all"]].assign(
        min_r=lo["pearson_r"].to_numpy(), without_min=lo["left_out"].to_numpy(),
        max_r=hi.set_index(["base_model", "metric"]).loc[list(zip(lo["base_model"], lo["metric"], strict=True)),
                                                          "pearson_r"].to_numpy(),
        without_max=hi.set_index(["base_model", "metric"]).loc[list(zip(lo["base_model"], lo["metric"],
                                                                         strict=True)), "left_out"].to_numpy())
    return (hr.paragraph("Pearson r with each block of subsets left out (sensitivity.csv has every one):")
            + hr.frame_html(summary.sort_values("pearson_r_all", ascending=False)))


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Every column of a runs table that holds a registered metric."""
    import metrics

    names = set(metrics.available())
    return [c for c in runs.columns if c.split("[")[0] in names]


def read_runs(runs_csvs: str | Path | Sequence[str | Path]) -> tuple[pd.DataFrame, list[Path]]:
    """One runs table from one or several runs.csv files (several: one per base model, or a sweep's variants of one
    study, same columns); a glob pattern (``results/demo/*/runs.csv``) stands for its matches, in sorted order."""
    given = [str(p) for p in ([runs_csvs] if isinstance(runs_csvs, (str, Path)) else runs_csvs)]
    pattern = [any(c in g for c in "*?[") for g in given]
    paths = [Path(p) for g, many in zip(given, pattern, strict=True) for p in (sorted(glob.glob(g)) if many else [g])]
    if any(pattern) and not paths:
        raise InputError(f"runs={given} matches no file: point the pattern at runs.csv files (a sweep's "
                         "results/<study>/*/runs.csv)")
    if not paths:
        raise InputError("runs= is empty: give a runs.csv, or a list of them (runs=[a.csv,b.csv])")
    frames = []
    for path in paths:
        frame = read_runs_csv(path, f"runs={path}")
        check_runs(frame, str(path))
        frames.append(frame)
    if len(frames) > 1:
        _check_mergeable(frames, paths)
        frames = tag_variants(frames, paths)
    runs = pd.concat(frames, ignore_index=True)
    check_runs(runs, " + ".join(map(str, paths)))
    return runs, paths


def variant_name(path: Path) -> str:
    """The variant a runs.csv belongs to: the ``variant`` its study recorded (a sweep job's swept overrides, in
    study_config.json beside it), else its folder's name (a sweep job's folder is named by them)."""
    config = path.parent / "study_config.json"
    if config.is_file():
        recorded = read_json(config, "study configuration")
        if not isinstance(recorded, dict):
            raise InputError(f"{config}: a study configuration is a JSON object, found {type(recorded).__name__}; "
                             "rebuild it with divbench-study, or remove it to name the variant by its folder")
        if recorded.get("variant"):
            return str(recorded["variant"])
    return path.parent.name


def tag_variants(frames: list[pd.DataFrame], paths: list[Path]) -> list[pd.DataFrame]:
    """Runs of one study under several settings (a sweep's jobs: the same base model's subsets twice) as variants:
    each file's rows get a ``variant`` column (:func:`variant_name`) and their report group becomes
    ``<base_model> [<variant>]``, so every table and figure reports each variant as it reports a base model, and
    ``variants.csv`` holds their differences. Runs of different base models (no shared row) merge unchanged."""
    keys = [c for c in ("base_model", "subset", "seed") if all(c in f for f in frames)]
    merged = pd.concat(frames, ignore_index=True)
    if not merged.duplicated(keys).any() or any("variant" in f for f in frames):
        return frames
    names = [variant_name(p) for p in paths]
    if len(set(names)) < len(names):
        raise InputError(f"runs={[str(p) for p in paths]}: rows share ({', '.join(keys)}) across files, so they are "
                         f"variants of one study, but their variant names (from study_config.json's variant, else "
                         f"the folder) repeat ({names}): give each its own folder, as a sweep job has")
    log.info("runs share (%s): reported as variants %s", ", ".join(keys), names)
    return [f.assign(variant=name, base_model=f["base_model"].astype(str) + f" [{name}]")
            for f, name in zip(frames, names, strict=True)]


def read_runs_csv(path: Path, label: str | None = None) -> pd.DataFrame:
    """One runs.csv; a missing, empty, folder or unparsable path is an input error naming it (as ``label``, e.g. the
    key that gave it, else the path). divbench-report and divbench-agreement read their inputs through it."""
    label = label or str(path)
    if not path.exists():
        raise InputError(f"{label} does not exist (no such runs.csv): run the study first, or point at its "
                         "results/<study>/runs.csv")
    if not path.is_file():
        raise InputError(f"{label} is a folder: point at the runs.csv inside it")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{label} is empty: give the runs.csv of a finished divbench-study run (re-run the study "
                         "or divbench-report to write it)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{label} is not a readable CSV ({str(e).strip()[:120]}); give a runs.csv written by "
                         "divbench-study") from None


def check_report_config(cfg: dict) -> None:
    """divbench-report's inputs and output folder, before Hydra writes anything."""
    from divcore.io import check_writable

    runs, paths = read_runs(cfg["runs"])
    out = Path(cfg["out"]) if cfg.get("out") else default_out(paths)
    check_out_dir(out, inputs=report_inputs(paths, out))
    check_writable(out, "out")
    if not metric_columns(runs):
        raise InputError(f"runs={cfg['runs']} holds no metric column: nothing to correlate")
    exclude_selectors(runs, list(cfg.get("exclude_selectors") or []), out, paths)
    rs.block_column(runs, cfg.get("block", "selector"))
    covariates = cfg.get("covariates")
    resolve_covariates(runs, None if covariates is None else list(covariates))


def report_inputs(paths: list[Path], out: Path) -> dict[str, Path]:
    """The runs files out must not be, lie in or hold: all of them, except one runs.csv rebuilt in its own folder
    (it is written back as read)."""
    in_place = len(paths) == 1 and paths[0].resolve() == (out / "runs.csv").resolve()
    return {} if in_place else {f"runs[{i}]" if len(paths) > 1 else "runs": p for i, p in enumerate(paths)}


def _check_mergeable(frames: list[pd.DataFrame], paths: list[Path]) -> None:
    first = set(frames[0].columns)
    for frame, path in zip(frames[1:], paths[1:], strict=True):
        if set(frame.columns) != first:
            raise InputError(f"{path} and {paths[0]} have different columns (only in {path}: "
                             f"{sorted(set(frame.columns) - first)}, only in {paths[0]}: "
                             f"{sorted(first - set(frame.columns))}): merge runs of studies with the same metrics "
                             "and evaluation")
    missing = [str(p) for f, p in zip(frames, paths, strict=True) if "base_model" not in f]
    if missing:
        raise InputError(f"{missing} lack a base_model column: merged runs are grouped by base model")


def default_out(paths: list[Path]) -> Path:
    """The folder of a single runs.csv; for several, their common parent folder, unless that would overwrite an
    input."""
    if len(paths) == 1:
        return paths[0].parent
    parent = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    if any(p.resolve() == parent / "runs.csv" for p in paths):
        raise InputError(f"the merged report would overwrite {parent / 'runs.csv'}: set out=<folder>")
    return parent


def exclude_selectors(runs: pd.DataFrame, names: Sequence[str], out: Path, paths: list[Path]) -> pd.DataFrame:
    """``runs`` without the subsets of the named selectors: a sensitivity analysis (e.g. without the duplicate
    subsets, whose low diversity can carry a correlation alone). Written beside, never over, the full report."""
    if not names:
        return runs
    unknown = sorted(set(names) - set(runs["selector"]))
    if unknown:
        raise InputError(f"exclude_selectors: {unknown} not among the runs' selectors "
                         f"{sorted(set(runs['selector']))}{did_you_mean(unknown[0], sorted(set(runs['selector'])))}")
    if any(out.resolve() == p.parent.resolve() for p in paths):
        raise InputError(f"exclude_selectors is set but out={out} holds the full report it would replace: give "
                         "out=<another folder> for the filtered report")
    kept = runs[~runs["selector"].isin(list(names))]
    sizes = kept.groupby("base_model").size() if "base_model" in kept else pd.Series([len(kept)])
    if kept.empty or sizes.min() < 3:
        raise InputError(f"exclude_selectors={list(names)} leaves fewer than 3 subsets of a base model: nothing to "
                         "correlate")
    return kept.reset_index(drop=True)


def regenerate(runs_csv: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
               exclude: Sequence[str] = (), **kw) -> dict[str, Path]:
    """Rebuild every table and figure from one runs.csv, or merge several (one per base model), alone: no cache,
    no models. ``out_dir`` defaults to :func:`default_out`; ``exclude`` drops the named selectors' subsets."""
    runs, paths = read_runs(runs_csv)
    out = Path(out_dir) if out_dir else default_out(paths)
    runs = exclude_selectors(runs, list(exclude), out, paths)
    check_out_dir(out, inputs=report_inputs(paths, out))
    in_place = len(paths) == 1 and out.resolve() == paths[0].parent.resolve()
    kept = {name: (out / name).read_text() for name in RUN_FILES if in_place and (out / name).exists()}
    return write_report(runs, metric_columns(runs), out, extra=kept, **kw)
