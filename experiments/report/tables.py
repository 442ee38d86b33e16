"""Correlation of every diversity metric with performance: tables (Markdown, CSV, LaTeX) and figures.

Per base model (and, when runs.csv holds several, their mean, as the paper averages LLaMA and Qwen), each metric
row carries Pearson / Spearman / Kendall with asymptotic, permutation and Benjamini-Hochberg adjusted p-values,
95% bootstrap intervals, the paired difference to a reference metric (default NovelSum) with its interval, the
partial correlation controlling for response length (and subset quality when the pool has it), and whether the
training noise floor leaves room for the interval (:mod:`experiments.report.stats` has the formulas). The ``mean`` row
is the mean of r, rho and tau over base models with a bootstrap interval of that mean (subsets resampled within
each model); averaging p-values is no test, so its p- and q-values are left empty.

The Markdown table is written by hand (pandas' ``to_markdown`` needs ``tabulate`` and pads cells, which makes
rows hard to grep); the LaTeX table is pandas' ``Styler.to_latex``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from divcore.errors import InputError
from divcore.io import atomic_write, make_temp_dir, remove_stale_temps, replace_dir
from divcore.registry import did_you_mean
from experiments.report import figures
from experiments.report import stats as st
from experiments.report.figures import fmt, novelsum_heatmap, scatter  # noqa: F401  (public since the first report)
from experiments.report.stats import bootstrap_ci  # noqa: F401

log = logging.getLogger(__name__)
RUNS_SCHEMA = 1
REQUIRED_RUN_COLUMNS = ("subset", "selector", "seed", "performance")
STATS = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}
STAT_NAMES = {"pearson": "pearson_r", "spearman": "spearman_rho", "kendall": "kendall_tau"}
CONTROLS = {"length": "mean_response_chars", "quality": "mean_quality"}  # partial-correlation confounds
TABLE_COLUMNS = ["base_model", "metric",
                 "pearson_r", "pearson_ci_low", "pearson_ci_high", "pearson_p", "pearson_p_perm", "pearson_q",
                 "pearson_q_perm",
                 "spearman_rho", "spearman_ci_low", "spearman_ci_high", "spearman_p", "spearman_p_perm", "spearman_q",
                 "spearman_q_perm",
                 "kendall_tau", "kendall_p",
                 "pearson_diff_vs_ref", "pearson_diff_ci_low", "pearson_diff_ci_high",
                 "spearman_diff_vs_ref", "spearman_diff_ci_low", "spearman_diff_ci_high",
                 "pearson_partial_length", "spearman_partial_length",
                 "pearson_partial_quality", "spearman_partial_quality",
                 "noise_ceiling", "noise_limited", "n"]
PAPER_REPORTED = Path(__file__).with_name("paper_reported.csv")
PROXY_LABEL = "-NLL of GPT-4 Turbo reference answers (judge-free proxy for instruction-following quality)"


def correlate(runs: pd.DataFrame, metric_columns: list[str], target: str = "performance", *,
              n_boot: int = 1000, seed: int = 0, n_perm: int = 9999, reference: str | None = None) -> pd.DataFrame:
    """The correlation table: one row per (base model, metric), plus a ``mean`` row per metric when runs holds
    several base models. ``reference`` names the metric every other is compared with (None: no comparison);
    ``n_perm`` permutation resamples per test (0: none). Statistics of a constant column are NaN (reported
    'undefined'), never 0."""
    if reference is not None and reference not in metric_columns:
        raise InputError(f"reference metric {reference!r} is not among the table's metrics {metric_columns}: "
                         "set reference_metric to one of them (or null for no paired comparison)")
    several = "base_model" in runs and runs["base_model"].nunique() > 1
    groups = list(runs.groupby("base_model", sort=True)) if several else [("all", runs)]
    rng = np.random.default_rng(seed)  # one stream: each model's subsets are resampled independently
    tables, boots = [], []
    for name, group in groups:
        table, boot = _correlate_group(group, metric_columns, target, rng, n_boot=n_boot, seed=seed,
                                       n_perm=n_perm, reference=reference)
        tables.append(table.assign(base_model=name))
        boots.append(boot)
    table = pd.concat(tables, ignore_index=True)
    if len(tables) > 1:
        table = pd.concat([table, _mean_rows(tables, boots, metric_columns, reference)], ignore_index=True)
    return table[TABLE_COLUMNS]


def _correlate_group(runs: pd.DataFrame, metric_columns: list[str], target: str, rng: np.random.Generator, *,
                     n_boot: int, seed: int, n_perm: int, reference: str | None
                     ) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    if len(runs) < 3:
        raise InputError(f"correlation needs at least 3 subsets, the study has {len(runs)}: add subsets or seeds")
    y = numeric(runs[target])
    idx = st.resample_indices(rng, len(runs), n_boot)
    boot = {col: _resampled(numeric(runs[col]), y, idx, rng) for col in metric_columns}
    floor = st.noise_floor_of(runs)
    rows = [_metric_row(runs, col, y, boot, n_perm=n_perm, seed=seed, reference=reference, floor=floor)
            for col in metric_columns]
    table = pd.DataFrame(rows, columns=[c for c in TABLE_COLUMNS if c != "base_model"])
    for kind in ("pearson", "spearman"):
        table[f"{kind}_q"] = st.bh_qvalues(table[f"{kind}_p"])
        table[f"{kind}_q_perm"] = st.bh_qvalues(table[f"{kind}_p_perm"])
    order = table.sort_values("pearson_r", ascending=False, na_position="last").index
    return table.loc[order].reset_index(drop=True), boot


def _metric_row(runs: pd.DataFrame, col: str, y: np.ndarray, boot: dict, *, n_perm: int, seed: int,
                reference: str | None, floor: dict) -> dict[str, Any]:
    x, ok = numeric(runs[col]), complete(runs, col, y)
    row: dict[str, Any] = {"metric": col, "n": int(ok.sum())}  # missing cells leave out their pair only
    for kind, stat in STAT_NAMES.items():
        row[stat], row[f"{kind}_p"] = _correlation(kind, x[ok], y[ok])
        if kind == "kendall":
            continue
        row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = st.percentile_interval(boot[col][kind])
        permutable = ok.all() or ok.sum() >= st.MIN_PERMUTATION_SUBSETS  # a whole study too small still raises
        row[f"{kind}_p_perm"] = st.permutation_p(kind, x[ok], y[ok], n_perm, seed) if n_perm and permutable \
            else np.nan
        if reference is not None:
            ref_ok = complete(runs, reference, y)
            row[f"{kind}_diff_vs_ref"] = row[stat] - _correlation(kind, numeric(runs[reference])[ref_ok],
                                                                  y[ref_ok])[0]
            paired = ok.all() and ref_ok.all()  # resampled together only when both columns are complete
            row[f"{kind}_diff_ci_low"], row[f"{kind}_diff_ci_high"] = st.percentile_interval(
                boot[col][kind] - boot[reference][kind]) if paired else (np.nan, np.nan)
        for control, column in CONTROLS.items():
            if column in runs:
                row[f"{kind}_partial_{control}"] = st.partial_correlation(x[ok], y[ok], numeric(runs[column])[ok],
                                                                          rank=kind == "spearman")
    row |= _noise_flag(row, floor)
    return row


def numeric(column: pd.Series) -> np.ndarray:
    """A runs.csv column as floats; a missing or non-numeric cell is NaN (:func:`warn_bad_cells` names it)."""
    return pd.to_numeric(column, errors="coerce").to_numpy(float)


def complete(runs: pd.DataFrame, col: str, y: np.ndarray) -> np.ndarray:
    """Rows where both the metric and the target are numbers: the pairs a correlation uses."""
    return np.isfinite(numeric(runs[col])) & np.isfinite(y)


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """:func:`stats.correlation` on complete pairs; undefined (NaN) below 3 of them."""
    return st.correlation(kind, x, y) if len(x) >= 3 else (np.nan, np.nan)


def _resampled(x: np.ndarray, y: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap r and rho of a metric: the study's shared resamples when its column is complete (so paired
    differences resample subsets together), else resamples of its own complete pairs."""
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.all():
        if ok.sum() < 3:
            return {k: np.full(len(idx), np.nan) for k in ("pearson", "spearman")}
        x, y, idx = x[ok], y[ok], st.resample_indices(rng, int(ok.sum()), len(idx))
    return {k: st.rowwise_correlation(k, x, y, idx) for k in ("pearson", "spearman")}


def _noise_flag(row: dict[str, Any], floor: dict) -> dict[str, Any]:
    """The attenuation ceiling and whether the Pearson interval reaches past it: beyond +-ceiling no metric can
    correlate with a performance this noisy, so such an interval is wider than the signal allows."""
    ceiling = floor.get("noise_ceiling")
    if ceiling is None or not np.isfinite(row.get("pearson_ci_low", np.nan)):  # no interval to compare
        return {"noise_ceiling": np.nan, "noise_limited": pd.NA}
    return {"noise_ceiling": ceiling,
            "noise_limited": bool(row["pearson_ci_high"] > ceiling or row["pearson_ci_low"] < -ceiling)}


def _mean_rows(tables: list[pd.DataFrame], boots: list[dict], metric_columns: list[str],
               reference: str | None) -> pd.DataFrame:
    """Mean of r, rho and tau over base models, with the percentile interval of the mean over resamples drawn
    within each model. Undefined in any model -> undefined mean. p- and q-values stay empty."""
    by_model = [t.set_index("metric") for t in tables]
    rows = []
    for col in metric_columns:
        row: dict[str, Any] = {"base_model": "mean", "metric": col, "n": int(sum(t.loc[col, "n"] for t in by_model))}
        for stat in STAT_NAMES.values():
            row[stat] = float(np.mean([t.loc[col, stat] for t in by_model]))
        for kind in ("pearson", "spearman"):
            mean_boot = np.mean([b[col][kind] for b in boots], axis=0)
            row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = st.percentile_interval(mean_boot)
            if reference is not None:
                row[f"{kind}_diff_vs_ref"] = float(np.mean([t.loc[col, f"{kind}_diff_vs_ref"] for t in by_model]))
                ref_boot = np.mean([b[reference][kind] for b in boots], axis=0)
                row[f"{kind}_diff_ci_low"], row[f"{kind}_diff_ci_high"] = st.percentile_interval(mean_boot - ref_boot)
            for control in CONTROLS:
                row[f"{kind}_partial_{control}"] = float(np.mean([t.loc[col, f"{kind}_partial_{control}"]
                                                                  for t in by_model]))
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


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
    """Add the paper's reported figure beside ours, marked as the paper's (metric base name match)."""
    paper = pd.read_csv(reported)
    lookup = {r.metric: f"{r.value:g} (paper: {r.statistic})" for r in paper.itertuples()}
    base = table["metric"].str.split("[", regex=False).str[0]
    return table.assign(paper_reported=[lookup.get(m, "") for m in base])


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


def check_out_dir(out: Path) -> None:
    """A report replaces its folder as a whole, so the folder must be a previous study's (or empty / new)."""
    ours = any((out / name).exists() for name in ("runs.csv", "plan.csv", *RUN_FILES))
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not ours)):
        raise InputError(f"{out} exists and is not a divbench results folder (no runs.csv): the report replaces "
                         "its folder as a whole, so choose a new or empty folder")


def write_report(runs: pd.DataFrame, metric_columns: list[str], out_dir: str | Path, *, n_boot: int = 1000,
                 seed: int = 0, n_perm: int = 9999, reference_metric: str | None = None,
                 alpha: float = 0.05, extra: dict[str, str] | None = None) -> dict[str, Path]:
    """Write runs.csv, table.{csv,md,tex}, noise_floor.json, scatter_<metric>.png, forest.png (and the NovelSum
    grid heatmap), plus the ``extra`` {file name: text} files, into a temporary folder beside out_dir, then swap
    it in as a whole: no file of an earlier report (a plot of a metric no longer computed) survives, and a kill
    leaves the previous report. Missing or non-numeric cells are named in a warning and left out pairwise."""
    if "schema" not in runs:
        runs = runs.assign(schema=RUNS_SCHEMA)
    check_runs(runs)
    warn_bad_cells(runs, ["performance", *metric_columns])
    out = Path(out_dir)
    check_out_dir(out)
    remove_stale_temps(out.parent, depth=1)
    numbers = runs.assign(**{c: numeric(runs[c]) for c in ["performance", *metric_columns]})
    tmp = make_temp_dir(out.parent, out.name)
    try:
        paths = _write_report_files(numbers, metric_columns, tmp, n_boot=n_boot, seed=seed, n_perm=n_perm,
                                    reference_metric=reference_metric, alpha=alpha)
        atomic_write(paths["runs"], runs.to_csv(index=False))  # as given, text cells included
        for name, text in (extra or {}).items():
            atomic_write(tmp / name, text)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {key: out / p.relative_to(tmp) for key, p in paths.items()}


def _write_report_files(runs: pd.DataFrame, metric_columns: list[str], out: Path, *, n_boot: int, seed: int,
                        n_perm: int, reference_metric: str | None, alpha: float) -> dict[str, Path]:
    if _replicates_of_one_subset(runs):
        return _write_noise_floor_only(runs, out)
    table = with_paper_values(correlate(runs, metric_columns, n_boot=n_boot, seed=seed, n_perm=n_perm,
                                        reference=reference_metric))
    floor = noise_floors(runs, table, alpha)
    note = report_note(runs)
    paths = {"runs": out / "runs.csv", "table_csv": out / "table.csv", "table_md": out / "table.md",
             "table_tex": out / "table.tex", "noise_floor": out / "noise_floor.json"}
    atomic_write(paths["runs"], runs.to_csv(index=False))
    atomic_write(paths["table_csv"], table.to_csv(index=False))
    header = f"> **Note:** {note}\n\n" if note else ""
    footer = f"\nPaired differences (`*_diff_vs_ref`) are against `{reference_metric}`.\n" if reference_metric else ""
    atomic_write(paths["table_md"], header + to_markdown(table) + footer)
    atomic_write(paths["table_tex"], to_latex(table, note))
    atomic_write(paths["noise_floor"], json.dumps(floor, indent=2))
    paths |= write_figures(runs, table, out, alpha)
    return paths


def _replicates_of_one_subset(runs: pd.DataFrame) -> bool:
    """A noise-floor run (experiment=noise_floor): one subset per base model, trained several times."""
    per_model = runs.groupby("base_model").size() if "base_model" in runs else pd.Series([len(runs)])
    return bool((per_model == 1).all()) and "n_replicates" in runs and bool((runs["n_replicates"] >= 2).all())


def _write_noise_floor_only(runs: pd.DataFrame, out: Path) -> dict[str, Path]:
    """One subset has no correlation to report: runs.csv and the training noise (noise_floor.json) only."""
    floor = noise_floors(runs, pd.DataFrame(columns=["base_model", "metric"] + TABLE_COLUMNS[2:]))
    log.info("one subset with %s training replicates: noise floor only, no correlation table",
             runs["n_replicates"].tolist())
    out.mkdir(parents=True, exist_ok=True)
    paths = {"runs": out / "runs.csv", "noise_floor": out / "noise_floor.json"}
    atomic_write(paths["runs"], runs.to_csv(index=False))
    atomic_write(paths["noise_floor"], json.dumps(floor, indent=2))
    return paths


def write_figures(runs: pd.DataFrame, table: pd.DataFrame, out: Path, alpha: float = 0.05) -> dict[str, Path]:
    """A scatter per metric (one panel per base model), the forest plot and the NovelSum grid heatmap."""
    ylabel = performance_label(runs)
    paths = {}
    models = table[table["base_model"] != "mean"]
    for metric, rows in models.groupby("metric", sort=False):
        paths[f"scatter:{metric}"] = out / f"scatter_{slug(metric)}.png"
        figures.scatter(runs, metric, rows, paths[f"scatter:{metric}"], ylabel=ylabel)
    paths["forest"] = out / "forest.png"
    what = "IT performance proxy (-NLL of reference answers)" if performance_is_proxy(runs) else "IT performance"
    figures.forest(table, paths["forest"], xlabel=f"Pearson r with {what}, 95% bootstrap interval", q_alpha=alpha)
    summary = table[table["base_model"].isin(["all", "mean"])]
    if figures.novelsum_heatmap(summary, out / "novelsum_grid_heatmap.png"):
        paths["heatmap"] = out / "novelsum_grid_heatmap.png"
    return paths


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Every column of a runs table that holds a registered metric."""
    import metrics

    names = set(metrics.available())
    return [c for c in runs.columns if c.split("[")[0] in names]


def read_runs(runs_csvs: str | Path | Sequence[str | Path]) -> tuple[pd.DataFrame, list[Path]]:
    """One runs table from one or several runs.csv files (several: one per base model, same columns)."""
    paths = [Path(p) for p in ([runs_csvs] if isinstance(runs_csvs, (str, Path)) else runs_csvs)]
    if not paths:
        raise InputError("runs= is empty: give a runs.csv, or a list of them (runs=[a.csv,b.csv])")
    frames = []
    for path in paths:
        frame = _read_csv(path)
        check_runs(frame, str(path))
        frames.append(frame)
    if len(frames) > 1:
        _check_mergeable(frames, paths)
    runs = pd.concat(frames, ignore_index=True)
    check_runs(runs, " + ".join(map(str, paths)))
    return runs, paths


def _read_csv(path: Path) -> pd.DataFrame:
    """One runs.csv; a missing, empty, folder or unparsable path is an input error naming it."""
    if not path.exists():
        raise InputError(f"{path} does not exist: run the study first, or point at its results/<study>/runs.csv")
    if not path.is_file():
        raise InputError(f"runs={path} is a folder: point at the runs.csv inside it")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"runs={path} is empty: re-run the study (or divbench-report) to write it") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"runs={path} is not a readable CSV ({str(e).strip()[:120]})") from None


def check_report_config(cfg: dict) -> None:
    """divbench-report's inputs and output folder, before Hydra writes anything."""
    from divcore.io import check_writable

    runs, paths = read_runs(cfg["runs"])
    out = Path(cfg["out"]) if cfg.get("out") else default_out(paths)
    check_writable(out, "out")
    check_out_dir(out)
    if not metric_columns(runs):
        raise InputError(f"runs={cfg['runs']} holds no metric column: nothing to correlate")
    exclude_selectors(runs, list(cfg.get("exclude_selectors") or []), out, paths)


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
    in_place = len(paths) == 1 and out.resolve() == paths[0].parent.resolve()
    kept = {name: (out / name).read_text() for name in RUN_FILES if in_place and (out / name).exists()}
    return write_report(runs, metric_columns(runs), out, extra=kept, **kw)
