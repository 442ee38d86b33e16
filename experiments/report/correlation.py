"""The correlation table: every diversity metric against performance, per base model and their mean.

One row per (base model, metric) with Pearson / Spearman / Kendall and their asymptotic p-values, block-bootstrap
95% intervals and block-permutation p-values (:mod:`experiments.report.resampling`), Benjamini-Hochberg q-values within
each metric family with every distinct metric counted once (:mod:`experiments.report.families`), the contrast with the
reference metric (:mod:`experiments.report.contrasts`), partial correlations on the configured covariates, the decision
accuracy (:mod:`experiments.report.decisions`) and the noise-ceiling flag. The ``mean`` row (several base models) is the
mean of each statistic over models with the interval of that mean over the same block resamples (blocks are drawn
once and shared by every model); averaging p-values is no test, so its p- and q-values are empty, except the
bootstrap p of its contrast.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from divcore.errors import InputError
from divcore.registry import did_you_mean
from experiments.report import contrasts as ct
from experiments.report import decisions as dec
from experiments.report import families as fam
from experiments.report import resampling as rs
from experiments.report import stats as st

log = logging.getLogger(__name__)
KINDS = ("pearson", "spearman")
STAT_NAMES = {"pearson": "pearson_r", "spearman": "spearman_rho", "kendall": "kendall_tau"}
CONTROLS = {"length": "mean_response_chars", "quality": "mean_quality"}  # partial-correlation confounds
PROFILE_COVARIATES = ("supervised_tokens", "unique_rows", "code_share", "multi_turn_share")  # study's subset_profile
BASE_COLUMNS = ["base_model", "metric",
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
DECISION_COLUMNS = ["decision_accuracy", "decision_accuracy_ci_low", "decision_accuracy_ci_high", "n_decisions"]
CONTRAST_STATS = ["diff", "williams_t", "steiger_z", "p", "p_steiger", "p_holm", "q", "p_boot", "q_boot"]
TAIL_COLUMNS = ["n_blocks", *fam.FAMILY_COLUMNS[1:]]


def table_columns(reference: str | None, covariates: list[str]) -> list[str]:
    """The table's columns: the base statistics, decision accuracy, one partial per covariate, the contrast
    columns when there is a reference, and the block / family bookkeeping."""
    partial = [f"{k}_partial_{c}" for c in covariates for k in KINDS]
    contrast = [f"{k}_contrast_{s}" for k in KINDS for s in CONTRAST_STATS] if reference else []
    return BASE_COLUMNS + DECISION_COLUMNS + partial + contrast + TAIL_COLUMNS


def resolve_reference(reference: str | None, metric_columns: list[str]) -> str | None:
    """The reference metric, or None when it is null or not among the metrics (then no contrast columns)."""
    if reference is None or reference in metric_columns:
        return reference
    log.warning("reference metric %r is not among the table's metrics%s: no contrast columns", reference,
                did_you_mean(reference, metric_columns))
    return None


def resolve_covariates(runs: pd.DataFrame, covariates: list[str] | None) -> list[str]:
    """The covariates to partial out: the listed runs.csv columns (each must exist), or by default (None) the
    study's subset-profile columns runs.csv holds. The length / quality controls have columns of their own."""
    if covariates is None:
        return [c for c in PROFILE_COVARIATES if c in runs]
    missing = [c for c in covariates if c not in runs]
    if missing:
        raise InputError(f"report.covariates: {missing} not among runs.csv's columns"
                         f"{did_you_mean(missing[0], list(runs.columns))}: list columns of runs.csv")
    return [c for c in dict.fromkeys(covariates) if c not in CONTROLS.values()]


def correlate(runs: pd.DataFrame, metric_columns: list[str], target: str = "performance", *,
              n_boot: int = 10_000, seed: int = 0, n_perm: int = 9999, reference: str | None = None,
              block: str | None = "selector", covariates: list[str] | None = None) -> pd.DataFrame:
    """The correlation table (see the module docstring). ``reference`` names the metric every other is compared
    with (None or absent: no contrast columns); ``block`` the resampling unit; ``n_perm`` permutation resamples
    per test (0: none); ``covariates`` the partial-correlation controls. Statistics of a constant column are NaN
    ('undefined'), never 0."""
    reference = resolve_reference(reference, metric_columns)
    covariates = resolve_covariates(runs, covariates)
    families = fam.metric_families(runs, metric_columns)
    labels = rs.block_labels(runs, block)
    codes, uniques = pd.factorize(pd.Series(labels), sort=True)
    counts = rs.draw_counts(np.random.default_rng(seed), len(uniques), n_boot)  # shared by metrics and models
    several = "base_model" in runs and runs["base_model"].nunique() > 1
    groups = [(name, idx) for name, idx in runs.groupby("base_model", sort=True).indices.items()] if several \
        else [("all", np.arange(len(runs)))]
    ctx = {"target": target, "n_perm": n_perm, "seed": seed, "reference": reference, "covariates": covariates,
           "families": families}
    tables, boots = [], []
    for name, idx in groups:
        part = runs.iloc[idx].reset_index(drop=True)
        table, boot = _correlate_group(part, metric_columns, rs.row_weights(counts, codes[idx]), labels[idx], ctx)
        tables.append(table.assign(base_model=name))
        boots.append(boot)
    table = pd.concat(tables, ignore_index=True)
    if len(tables) > 1:
        table = pd.concat([table, _mean_rows(tables, boots, metric_columns, ctx)], ignore_index=True)
    table = table.drop(columns=fam.FAMILY_COLUMNS[1:], errors="ignore").merge(families, on="metric", how="left")
    return table.reindex(columns=table_columns(reference, covariates))


def _correlate_group(runs: pd.DataFrame, metric_columns: list[str], w: np.ndarray, labels: np.ndarray,
                     ctx: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    if len(runs) < 3:
        raise InputError(f"correlation needs at least 3 subsets, the study has {len(runs)}: add subsets or seeds")
    y = numeric(runs[ctx["target"]])
    floor = st.noise_floor_of(runs)
    pairs = dec.decision_pairs(runs, floor.get("within_sd_pooled"), ctx["target"])
    boot = {col: _resampled(numeric(runs[col]), y, w, pairs) for col in metric_columns}
    rows = [_metric_row(runs, col, y, boot, labels, pairs, floor, ctx) for col in metric_columns]
    table = pd.DataFrame(rows).merge(ctx["families"], on="metric", how="left")
    counted = fam.counted(table)
    for kind in KINDS:
        for p, q in ((f"{kind}_p", f"{kind}_q"), (f"{kind}_p_perm", f"{kind}_q_perm")):
            table[q] = _family_adjusted(table, counted, p, st.bh_qvalues)
    if ctx["reference"] is not None:
        table = _add_contrasts(table, runs, y, boot, ctx)
    order = table.sort_values("pearson_r", ascending=False, na_position="last").index
    return table.loc[order].reset_index(drop=True), boot


def _resampled(x: np.ndarray, y: np.ndarray, w: np.ndarray, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Bootstrap r, rho and decision accuracy of one metric over the shared block resamples (a missing cell
    takes its row out of every resample, so the metric stays paired with the others)."""
    out = {k: rs.weighted_correlation(k, x, y, w) for k in KINDS}
    out["decision"] = np.asarray(dec.decision_accuracy(x, y, pairs, w))
    return out


def _metric_row(runs: pd.DataFrame, col: str, y: np.ndarray, boot: dict, labels: np.ndarray, pairs: np.ndarray,
                floor: dict, ctx: dict[str, Any]) -> dict[str, Any]:
    x, ok = numeric(runs[col]), complete(runs, col, y)
    row: dict[str, Any] = {"metric": col, "n": int(ok.sum()), "n_blocks": len(set(labels[ok]))}
    reference = ctx["reference"]
    for kind, stat in STAT_NAMES.items():
        row[stat], row[f"{kind}_p"] = _correlation(kind, x[ok], y[ok])
        if kind == "kendall":
            continue
        row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = st.percentile_interval(boot[col][kind])
        permutable = ok.all() or ok.sum() >= st.MIN_PERMUTATION_SUBSETS  # a whole study too small still raises
        row[f"{kind}_p_perm"] = (rs.block_permutation_p(kind, x, y, labels, ctx["n_perm"], ctx["seed"])
                                 if ctx["n_perm"] and permutable else np.nan)
        if reference is not None:
            ref_ok = complete(runs, reference, y)
            row[f"{kind}_diff_vs_ref"] = row[stat] - _correlation(kind, numeric(runs[reference])[ref_ok],
                                                                  y[ref_ok])[0]
            row[f"{kind}_diff_ci_low"], row[f"{kind}_diff_ci_high"] = st.percentile_interval(
                boot[col][kind] - boot[reference][kind])
        for name, column in [*CONTROLS.items(), *((c, c) for c in ctx["covariates"])]:
            if column in runs:
                row[f"{kind}_partial_{name}"] = st.partial_correlation(x[ok], y[ok], numeric(runs[column])[ok],
                                                                       rank=kind == "spearman")
    row["decision_accuracy"] = dec.decision_accuracy(x, y, pairs)
    row["decision_accuracy_ci_low"], row["decision_accuracy_ci_high"] = st.percentile_interval(boot[col]["decision"])
    row["n_decisions"] = int((pairs & ok[:, None] & ok[None, :]).sum() // 2)
    row |= _noise_flag(row, floor)
    return row


def _family_adjusted(table: pd.DataFrame, counted: pd.Series, p_column: str, adjust) -> np.ndarray:
    """``adjust`` (BH or Holm) of ``p_column`` within each family over its counted rows (distinct, defined);
    a duplicate name gets its representative's value."""
    out = pd.Series(np.nan, index=table.index)
    for _, rows in table[counted].groupby("family"):
        out[rows.index] = adjust(rows[p_column].to_numpy(float))
    by_name = dict(zip(table["metric"], out, strict=True))
    return np.array([by_name.get(rep, np.nan) if rep != m else v
                     for m, rep, v in zip(table["metric"], table["representative"], out, strict=True)])


def _add_contrasts(table: pd.DataFrame, runs: pd.DataFrame, y: np.ndarray, boot: dict,
                   ctx: dict[str, Any]) -> pd.DataFrame:
    """Williams' t and Steiger's z of each metric against the reference, with Holm and BH within each family
    over the distinct metrics (the reference and its other names excluded: they are the reference)."""
    reference = ctx["reference"]
    ref = numeric(runs[reference])
    rows = []
    for col in table["metric"]:
        rows.append({f"{k}_{name}": v for k in KINDS
                     for name, v in _contrast(k, numeric(runs[col]), ref, y, boot[col][k] - boot[reference][k])
                     .items()})
    table = pd.concat([table, pd.DataFrame(rows, index=table.index)], axis=1)
    ref_group = table.loc[table["metric"] == reference, "same_as"].iloc[0].split(";") + [reference]
    family = fam.counted(table) & ~table["metric"].isin(ref_group)
    for kind in KINDS:
        table[f"{kind}_contrast_p_holm"] = _family_adjusted(table, family, f"{kind}_contrast_p", ct.holm)
        table[f"{kind}_contrast_q"] = _family_adjusted(table, family, f"{kind}_contrast_p", st.bh_qvalues)
        table[f"{kind}_contrast_q_boot"] = _family_adjusted(table, family, f"{kind}_contrast_p_boot", st.bh_qvalues)
    return table


def _contrast(kind: str, x: np.ndarray, ref: np.ndarray, y: np.ndarray, boot_diff: np.ndarray) -> dict[str, float]:
    """Difference, Williams' t, Steiger's z and their p-values on the rows where metric, reference and
    performance are all defined, and the block-bootstrap p of the difference."""
    ok = np.isfinite(x) & np.isfinite(ref) & np.isfinite(y)
    x, ref, y = x[ok], ref[ok], y[ok]
    if kind == "spearman":
        x, ref, y = (pd.Series(v).rank().to_numpy() for v in (x, ref, y))
    r_jk, r_jh, r_kh = (_correlation("pearson", a, b)[0] for a, b in ((x, y), (ref, y), (x, ref)))
    t, p = ct.williams_t(r_jk, r_jh, r_kh, len(x))
    z, p_z = ct.steiger_z(r_jk, r_jh, r_kh, len(x))
    return {"contrast_diff": r_jk - r_jh, "contrast_williams_t": t, "contrast_steiger_z": z, "contrast_p": p,
            "contrast_p_steiger": p_z, "contrast_p_boot": ct.bootstrap_p(boot_diff)}


def numeric(column: pd.Series) -> np.ndarray:
    """A runs.csv column as floats; a missing or non-numeric cell is NaN (``warn_bad_cells`` names it)."""
    return pd.to_numeric(column, errors="coerce").to_numpy(float)


def complete(runs: pd.DataFrame, col: str, y: np.ndarray) -> np.ndarray:
    """Rows where both the metric and the target are numbers: the pairs a correlation uses."""
    return np.isfinite(numeric(runs[col])) & np.isfinite(y)


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """:func:`stats.correlation` on complete pairs; undefined (NaN) below 3 of them."""
    return st.correlation(kind, x, y) if len(x) >= 3 else (np.nan, np.nan)


def _noise_flag(row: dict[str, Any], floor: dict) -> dict[str, Any]:
    """The attenuation ceiling and whether the Pearson interval reaches past it: beyond +-ceiling no metric can
    correlate with a performance this noisy, so such an interval is wider than the signal allows."""
    ceiling = floor.get("noise_ceiling")
    if ceiling is None or not np.isfinite(row.get("pearson_ci_low", np.nan)):  # no interval to compare
        return {"noise_ceiling": np.nan, "noise_limited": pd.NA}
    return {"noise_ceiling": ceiling,
            "noise_limited": bool(row["pearson_ci_high"] > ceiling or row["pearson_ci_low"] < -ceiling)}


MEAN_STATS = ["pearson_r", "spearman_rho", "kendall_tau", "decision_accuracy"]


def _mean_rows(tables: list[pd.DataFrame], boots: list[dict], metric_columns: list[str],
               ctx: dict[str, Any]) -> pd.DataFrame:
    """Mean of each statistic over base models, with the percentile interval of the mean over the shared block
    resamples. Undefined in any model -> undefined mean. p- and q-values stay empty, except the contrast's
    bootstrap p (and its BH q over the family)."""
    by_model = [t.set_index("metric") for t in tables]
    reference = ctx["reference"]
    mean_of = [c for c in tables[0].columns if "_partial_" in c or c.endswith("_diff_vs_ref")
               or c.endswith("_contrast_diff")] + MEAN_STATS
    rows = []
    for col in metric_columns:
        row: dict[str, Any] = {"base_model": "mean", "metric": col, "n": int(sum(t.loc[col, "n"] for t in by_model)),
                               "n_blocks": int(max(t.loc[col, "n_blocks"] for t in by_model))}
        row |= {c: float(np.mean([t.loc[col, c] for t in by_model])) for c in mean_of}
        mean_boot = {k: np.mean([b[col][k] for b in boots], axis=0) for k in (*KINDS, "decision")}
        for kind in KINDS:
            row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = st.percentile_interval(mean_boot[kind])
            if reference is not None:
                diff = mean_boot[kind] - np.mean([b[reference][kind] for b in boots], axis=0)
                row[f"{kind}_diff_ci_low"], row[f"{kind}_diff_ci_high"] = st.percentile_interval(diff)
                row[f"{kind}_contrast_p_boot"] = ct.bootstrap_p(diff)
        row["decision_accuracy_ci_low"], row["decision_accuracy_ci_high"] = st.percentile_interval(
            mean_boot["decision"])
        rows.append(row)
    table = pd.DataFrame(rows).merge(ctx["families"], on="metric", how="left")
    if reference is not None:
        ref_group = table.loc[table["metric"] == reference, "same_as"].iloc[0].split(";") + [reference]
        family = fam.counted(table) & ~table["metric"].isin(ref_group)
        for kind in KINDS:
            table[f"{kind}_contrast_q_boot"] = _family_adjusted(table, family, f"{kind}_contrast_p_boot",
                                                                st.bh_qvalues)
    return table


VARIANT_COLUMNS = ["base_model", "variant", "vs_variant", "metric", "n", "n_vs",
                   "pearson_r", "pearson_r_vs", "pearson_diff", "pearson_diff_ci_low", "pearson_diff_ci_high",
                   "spearman_rho", "spearman_rho_vs", "spearman_diff", "spearman_diff_ci_low", "spearman_diff_ci_high"]


def variant_contrasts(runs: pd.DataFrame, metric_columns: list[str], target: str = "performance",
                      n_boot: int = 10_000, seed: int = 0, block: str | None = "selector") -> pd.DataFrame:
    """Each variant's correlations against the first variant's (variants sorted by name), per base model: for
    Pearson r and Spearman rho the two values, their difference ``d = r_variant - r_vs`` and the 95% percentile
    interval of ``d`` over block resamples drawn once for every variant (the same selector blocks weigh both sides
    of a draw, so variants that share their subsets' blocks are compared pairwise). Rows carry ``variant`` (a sweep
    job's overrides, see :func:`experiments.report.tables.tag_variants`); without two variants the table is empty.
    """
    if "variant" not in runs or runs["variant"].nunique() < 2:
        return pd.DataFrame(columns=VARIANT_COLUMNS)
    labels = rs.block_labels(runs, block)
    codes, uniques = pd.factorize(pd.Series(labels), sort=True)
    counts = rs.draw_counts(np.random.default_rng(seed), len(uniques), n_boot)
    model = [str(m).removesuffix(f" [{v}]") for m, v in zip(runs["base_model"], runs["variant"], strict=True)]
    runs = runs.assign(_model=model)
    rows = []
    for name, part in runs.groupby("_model", sort=True):
        variants = sorted(part["variant"].unique())
        stats = {v: _variant_stats(part[part["variant"] == v], metric_columns, target, counts, codes)
                 for v in variants}
        first = variants[0]
        for v in variants[1:]:
            for col in metric_columns:
                (n, point, boot), (n_vs, point_vs, boot_vs) = stats[v][col], stats[first][col]
                row: dict[str, Any] = {"base_model": name, "variant": v, "vs_variant": first, "metric": col,
                                       "n": n, "n_vs": n_vs}
                for kind, stat in (("pearson", "pearson_r"), ("spearman", "spearman_rho")):
                    row |= {stat: point[kind], f"{stat}_vs": point_vs[kind],
                            f"{kind}_diff": point[kind] - point_vs[kind]}
                    row[f"{kind}_diff_ci_low"], row[f"{kind}_diff_ci_high"] = st.percentile_interval(
                        boot[kind] - boot_vs[kind])
                rows.append(row)
    return pd.DataFrame(rows, columns=VARIANT_COLUMNS)


def _variant_stats(part: pd.DataFrame, metric_columns: list[str], target: str, counts: np.ndarray,
                   codes: np.ndarray) -> dict[str, tuple[int, dict[str, float], dict[str, np.ndarray]]]:
    """Per metric: (complete pairs, {kind: value}, {kind: bootstrap values}) of one variant's rows."""
    idx = part.index.to_numpy()
    y, w = numeric(part[target]), rs.row_weights(counts, codes[idx])
    out = {}
    for col in metric_columns:
        x, ok = numeric(part[col]), complete(part, col, y)
        out[col] = (int(ok.sum()), {k: _correlation(k, x[ok], y[ok])[0] for k in KINDS},
                    {k: rs.weighted_correlation(k, x, y, w) for k in KINDS})
    return out
