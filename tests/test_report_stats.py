"""The report's statistics against scipy and hand computations on fixed small tables; merged multi-model reports;
undefined stays undefined; bad input fails before anything is written."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from divcore.errors import InputError
from experiments.report import stats as st
from experiments.report.tables import aggregate_replicates, correlate, regenerate, write_report
from tests.conftest import ROOT
from tests.helpers import compose

NEW_COLUMNS = ["pearson_p_perm", "spearman_p_perm", "pearson_q", "spearman_q", "pearson_diff_vs_ref",
               "pearson_diff_ci_low", "pearson_diff_ci_high", "spearman_diff_vs_ref", "pearson_partial_length",
               "spearman_partial_length"]
# Issue 17's measurement: -NLL of 48 reference answers, six demo subsets, three training seeds each.
ISSUE_17 = {"duplicate_25": [-2.00927, -2.01051, -2.01050], "duplicate_50": [-2.01125, -2.01123, -2.01365],
            "kcenter": [-2.00271, -2.00413, -2.00252], "novelselect": [-2.00296, -2.00263, -2.00389],
            "random_s0": [-2.00343, -2.00370, -2.00793], "random_s1": [-2.00189, -2.00313, -2.00192]}


def _runs(n: int = 7, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    novelsum = rng.normal(size=n)
    chars = rng.normal(500, 80, size=n)
    perf = 0.6 * novelsum + 0.002 * chars + rng.normal(0, 0.5, size=n)
    return pd.DataFrame({"subset": [f"s{i}" for i in range(n)], "selector": "random", "seed": 0,
                         "novelsum": novelsum, "vendi": rng.normal(size=n) + 0.01 * chars, "radius": 1.0,
                         "mean_response_chars": chars, "performance": perf, "schema": 1})


def test_permutation_p_values_match_scipy():
    runs = _runs()
    x, y = runs["vendi"].to_numpy(), runs["performance"].to_numpy()
    table = correlate(runs, ["novelsum", "vendi"], n_boot=100, n_perm=9999, seed=3).set_index("metric")
    # n = 7: 7! = 5040 <= 9999 pairings, so scipy enumerates them all (exact test)
    exact = stats.pearsonr(x, y, method=stats.PermutationMethod(n_resamples=np.inf))
    assert table.loc["vendi", "pearson_p_perm"] == pytest.approx(exact.pvalue)
    rho_test = stats.permutation_test((x,), lambda a: stats.spearmanr(a, y).statistic,
                                      permutation_type="pairings", n_resamples=np.inf)
    assert table.loc["vendi", "spearman_p_perm"] == pytest.approx(rho_test.pvalue)
    assert table.loc["vendi", "kendall_p"] == pytest.approx(stats.kendalltau(x, y, method="exact").pvalue)
    assert table.loc["vendi", "pearson_p"] == pytest.approx(stats.pearsonr(x, y).pvalue)


def test_permutation_p_is_seeded_when_sampled():
    runs = _runs(n=12)
    a = correlate(runs, ["vendi"], n_boot=50, n_perm=999, seed=1)
    b = correlate(runs, ["vendi"], n_boot=50, n_perm=999, seed=1)
    c = correlate(runs, ["vendi"], n_boot=50, n_perm=999, seed=2)
    assert a["pearson_p_perm"].iloc[0] == b["pearson_p_perm"].iloc[0] != c["pearson_p_perm"].iloc[0]


def test_bh_q_values_by_hand_and_by_scipy():
    # p = (0.01, 0.04, 0.03): sorted 0.01, 0.03, 0.04 -> 0.01*3/1 = 0.03, 0.03*3/2 = 0.045, 0.04*3/3 = 0.04;
    # step-up minimum from the top: q = (0.03, 0.04, 0.04)
    np.testing.assert_allclose(st.bh_qvalues([0.01, 0.04, 0.03]), [0.03, 0.04, 0.04])
    q = st.bh_qvalues([0.01, np.nan, 0.04, 0.03])
    assert np.isnan(q[1]) and q[[0, 2, 3]] == pytest.approx([0.03, 0.04, 0.04])  # undefined is no test
    runs = _runs()
    table = correlate(runs, ["novelsum", "vendi", "radius"], n_boot=50, n_perm=999)
    defined = table["pearson_p"].notna()
    np.testing.assert_allclose(table.loc[defined, "pearson_q"],
                               stats.false_discovery_control(table.loc[defined, "pearson_p"]))
    np.testing.assert_allclose(table.loc[defined, "spearman_q_perm"],
                               stats.false_discovery_control(table.loc[defined, "spearman_p_perm"]))


def _concatenated_resamples(counts: np.ndarray, codes: np.ndarray):
    """Brute force of the block bootstrap: each resample's rows, block by block, as many times as drawn."""
    for row in counts:
        yield np.concatenate([np.flatnonzero(codes == g).repeat(c) for g, c in enumerate(row)])


def test_paired_difference_uses_the_same_resamples():
    runs = _runs(n=9)
    table = correlate(runs, ["novelsum", "vendi"], n_boot=300, seed=5, n_perm=0,
                      reference="novelsum").set_index("metric")
    x, ref, y = (runs[c].to_numpy() for c in ("vendi", "novelsum", "performance"))
    assert table.loc["vendi", "pearson_diff_vs_ref"] == pytest.approx(
        stats.pearsonr(x, y).statistic - stats.pearsonr(ref, y).statistic)
    counts = np.random.default_rng(5).multinomial(9, np.full(9, 1 / 9), size=300)  # one subset per block here
    diffs = []
    for b in _concatenated_resamples(counts, np.arange(9)):
        if np.ptp(x[b]) and np.ptp(ref[b]) and np.ptp(y[b]):
            diffs.append(stats.pearsonr(x[b], y[b]).statistic - stats.pearsonr(ref[b], y[b]).statistic)
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert table.loc["vendi", "pearson_diff_ci_low"] == pytest.approx(low)
    assert table.loc["vendi", "pearson_diff_ci_high"] == pytest.approx(high)
    assert table.loc["novelsum", "pearson_diff_vs_ref"] == 0.0
    assert table.loc["vendi", "spearman_diff_vs_ref"] == pytest.approx(
        stats.spearmanr(x, y).statistic - stats.spearmanr(ref, y).statistic)


def test_partial_correlation_matches_the_textbook_formula():
    runs = _runs(n=10)
    table = correlate(runs, ["vendi"], n_boot=50, n_perm=0).set_index("metric")
    x, y, z = (runs[c].to_numpy() for c in ("vendi", "performance", "mean_response_chars"))

    def partial(a, b, c):
        rab, rac, rbc = (stats.pearsonr(u, v).statistic for u, v in ((a, b), (a, c), (b, c)))
        return (rab - rac * rbc) / math.sqrt((1 - rac**2) * (1 - rbc**2))

    assert table.loc["vendi", "pearson_partial_length"] == pytest.approx(partial(x, y, z))
    ranks = [stats.rankdata(v) for v in (x, y, z)]
    assert table.loc["vendi", "spearman_partial_length"] == pytest.approx(partial(*ranks))
    assert np.isnan(table.loc["vendi", "pearson_partial_quality"])  # the pool has no quality


def test_partial_on_quality_when_the_pool_has_it():
    runs = _runs(n=8).assign(mean_quality=np.linspace(1, 2, 8) ** 2)
    row = correlate(runs, ["novelsum"], n_boot=50, n_perm=0).iloc[0]
    x, y, q = (runs[c].to_numpy() for c in ("novelsum", "performance", "mean_quality"))
    fit = lambda v: v - np.polyval(np.polyfit(q, v, 1), q)  # noqa: E731
    assert row["pearson_partial_quality"] == pytest.approx(stats.pearsonr(fit(x), fit(y)).statistic)


@pytest.mark.parametrize("flat", ["radius", "performance"])
def test_constant_columns_stay_undefined_in_every_new_column(flat, tmp_path):
    runs = _runs().assign(radius=1.0)
    if flat == "performance":
        runs["performance"] = 0.5
    table = correlate(runs, ["novelsum", "radius"], n_boot=100, n_perm=999, reference="novelsum")
    rows = table[table["metric"] == "radius"] if flat == "radius" else table
    for col in NEW_COLUMNS + ["pearson_r", "spearman_rho", "kendall_tau", "pearson_ci_low", "spearman_q_perm"]:
        assert rows[col].isna().all(), col
    if flat == "radius":
        assert table.loc[table["metric"] == "novelsum", NEW_COLUMNS].notna().all(axis=None)
    paths = write_report(runs, ["novelsum", "radius"], tmp_path, n_boot=50, n_perm=99, reference_metric="novelsum")
    assert "undefined" in paths["table_md"].read_text()
    assert pd.read_csv(paths["table_csv"]).loc[lambda t: t["metric"] == "radius", NEW_COLUMNS].isna().all(axis=None)


def test_bad_inputs_are_specific():
    with pytest.raises(InputError, match="permutation test needs at least 4 subsets"):
        correlate(_runs(n=3), ["novelsum"], n_boot=20)
    with pytest.raises(InputError, match="report.block='nope' is neither"):
        correlate(_runs(), ["novelsum"], n_boot=20, block="nope")
    with pytest.raises(InputError, match=r"report.covariates: \['nope'\] not among"):
        correlate(_runs(), ["novelsum"], n_boot=20, covariates=["nope"])


def test_noise_floor_of_issue_17_measurement():
    floor = st.noise_floor(list(ISSUE_17.values()))
    f = stats.f_oneway(*ISSUE_17.values())
    assert floor["f_stat"] == pytest.approx(f.statistic) and floor["f_stat"] == pytest.approx(28.82, abs=0.01)
    assert floor["p_value"] == pytest.approx(f.pvalue)
    assert floor["within_sd"] == pytest.approx(0.00114, abs=1e-5)  # mean of the six replicate SDs
    assert floor["between_sd"] == pytest.approx(0.00410, abs=1e-5)  # SD of the six replicate means
    # pooled within SD: sqrt(mean of the variances) (balanced), and reliability 1 - 1/F
    pooled = math.sqrt(np.mean([np.var(v, ddof=1) for v in ISSUE_17.values()]))
    assert floor["within_sd_pooled"] == pytest.approx(pooled)
    assert floor["noise_ceiling"] == pytest.approx(math.sqrt(1 - 1 / f.statistic))
    single = st.noise_floor([[1.0], [2.0], [3.0]])
    assert single["within_sd"] is None and single["f_stat"] is None and single["between_sd"] == pytest.approx(1.0)


def _replicate_rows() -> pd.DataFrame:
    rows = []
    for i, (label, values) in enumerate(ISSUE_17.items()):
        for train_seed, v in zip((42, 1, 2), values, strict=True):
            rows.append({"subset": label, "selector": label.split("_")[0], "seed": 0, "train_seed": train_seed,
                         "size": 16, "base_model": "smollm2", "novelsum": 0.5 + 0.01 * i,
                         "mean_response_chars": 400.0 + i, "performance": v, "schema": 1})
    return pd.DataFrame(rows)


def test_replicates_become_one_row_per_subset_and_a_noise_floor(tmp_path):
    runs = aggregate_replicates(_replicate_rows())
    assert len(runs) == 6 and (runs["n_replicates"] == 3).all() and "train_seed" not in runs
    dup = runs.set_index("subset").loc["duplicate_50"]
    assert dup["performance"] == pytest.approx(np.mean(ISSUE_17["duplicate_50"]))
    assert dup["performance_sd"] == pytest.approx(np.std(ISSUE_17["duplicate_50"], ddof=1))
    assert json.loads(dup["train_seeds"]) == [1, 2, 42]
    assert json.loads(dup["performance_replicates"]) == pytest.approx([-2.01123, -2.01365, -2.01125])
    assert dup["size"] == 16 and dup["novelsum"] == pytest.approx(0.51)  # subset properties kept as they are
    paths = write_report(runs, ["novelsum"], tmp_path, n_boot=100, n_perm=999, reference_metric="novelsum")
    floor = json.loads(paths["noise_floor"].read_text())
    assert floor["f_stat"] == pytest.approx(28.82, abs=0.01) and floor["within_sd"] == pytest.approx(0.00114, abs=1e-5)
    assert set(floor["significant_after_bh"]) == {"pearson_q", "spearman_q", "pearson_q_perm", "spearman_q_perm"}
    table = pd.read_csv(paths["table_csv"])
    assert table["noise_ceiling"].iloc[0] == pytest.approx(math.sqrt(1 - 1 / floor["f_stat"]))
    # regenerating from runs.csv alone gives the same noise floor
    regenerate(paths["runs"], tmp_path / "again", n_boot=100, n_perm=999, reference_metric="novelsum")
    assert json.loads((tmp_path / "again" / "noise_floor.json").read_text()) == floor


def _two_models(tmp_path) -> tuple:
    a = _runs(n=6, seed=1).assign(base_model="llama")
    b = _runs(n=6, seed=2).assign(base_model="qwen")
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    return a, b


def test_merged_two_model_report(tmp_path):
    a, b = _two_models(tmp_path)
    paths = regenerate([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out", n_boot=200, seed=4, n_perm=999,
                       reference_metric="novelsum")
    table = pd.read_csv(paths["table_csv"])
    assert list(dict.fromkeys(table["base_model"])) == ["llama", "qwen", "mean"]
    by = table.set_index(["base_model", "metric"])
    for model, runs in (("llama", a), ("qwen", b)):
        assert by.loc[(model, "vendi"), "pearson_r"] == pytest.approx(
            stats.pearsonr(runs["vendi"], runs["performance"]).statistic)
    mean = by.loc[("mean", "vendi")]
    for stat in ("pearson_r", "spearman_rho", "kendall_tau"):
        assert mean[stat] == pytest.approx((by.loc[("llama", "vendi"), stat] + by.loc[("qwen", "vendi"), stat]) / 2)
    assert mean[["pearson_p", "spearman_p", "kendall_p", "pearson_q", "pearson_p_perm"]].isna().all()
    assert mean["pearson_ci_low"] <= mean["pearson_r"] <= mean["pearson_ci_high"]
    # the mean's interval: the same blocks (subset labels s0..s5) drawn for both models, r averaged per resample
    counts = np.random.default_rng(4).multinomial(6, np.full(6, 1 / 6), size=200)
    boot = np.mean([[stats.pearsonr(r["vendi"].to_numpy()[i], r["performance"].to_numpy()[i]).statistic
                     for i in _concatenated_resamples(counts, np.arange(6))] for r in (a, b)], axis=0)
    assert (mean["pearson_ci_low"], mean["pearson_ci_high"]) == pytest.approx(st.percentile_interval(boot))
    assert len(pd.read_csv(paths["runs"])) == 12
    assert set(json.loads(paths["noise_floor"].read_text())["base_models"]) == {"llama", "qwen"}
    assert paths["forest"].stat().st_size > 1000 and (tmp_path / "out" / "scatter_novelsum.png").exists()


@pytest.mark.parametrize("case, message", [
    ("columns", "have different columns"),
    ("duplicates", "rows share"),
    ("block", "report.block='nope'"),
])
def test_merge_rejects_bad_input_and_writes_nothing(tmp_path, case, message):
    a, b = _two_models(tmp_path)
    if case == "columns":
        b.drop(columns="vendi").to_csv(tmp_path / "b.csv", index=False)
    if case == "duplicates":
        b.assign(base_model="llama", subset=a["subset"]).to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        regenerate([tmp_path / "a.csv", tmp_path / "b.csv"], out, n_boot=20, n_perm=99,
                   reference_metric="novelsum", block="nope" if case == "block" else "selector")
    assert not out.exists()


@pytest.mark.slow  # two subprocesses
def test_report_cli_merges_and_fails_with_exit_2(tmp_path):
    _two_models(tmp_path)
    cmd = [sys.executable, "-m", "experiments.cli.report", f"hydra.run.dir={tmp_path}/hydra", "n_boot=50", "n_perm=99"]
    ok = subprocess.run(cmd + [f"runs=[{tmp_path}/a.csv,{tmp_path}/b.csv]", f"out={tmp_path}/out"], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert {"table.csv", "noise_floor.json", "forest.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    bad = subprocess.run(cmd + [f"runs=[{tmp_path}/a.csv,{tmp_path}/b.csv]", f"out={tmp_path}/bad",
                                "block=selektor"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "report.block='selektor'" in bad.stderr + bad.stdout
    assert not (tmp_path / "bad").exists()


def test_one_subset_with_replicates_reports_its_noise_floor_only(tmp_path):
    rows = _replicate_rows()
    runs = aggregate_replicates(rows[rows["subset"] == "kcenter"])
    paths = write_report(runs, ["novelsum"], tmp_path, n_boot=50, n_perm=99, reference_metric="novelsum")
    assert set(paths) == {"runs", "noise_floor"} and not (tmp_path / "table.csv").exists()
    floor = json.loads(paths["noise_floor"].read_text())
    assert floor["within_sd"] == pytest.approx(np.std(ISSUE_17["kcenter"], ddof=1))
    assert floor["f_stat"] is None and floor["between_sd"] is None


@pytest.mark.parametrize("preset, subsets, replicates", [("mini", 24, 2), ("noise_floor", 1, 5)])
def test_presets_plan(preset, subsets, replicates, tmp_path):
    from experiments.engine.pipeline import replicate_entries, subset_plan

    cfg = compose("study", [f"experiment={preset}"])
    plan = subset_plan(cfg["selection"])
    assert len(plan) == subsets and len(replicate_entries(plan, cfg)) == subsets * replicates
    if preset == "mini":
        assert {e["selector"] for e in plan} == {"random", "duplicate", "kmeans", "kcenter", "farthest", "qdit",
                                                  "repr_filter", "novelselect", "mig"}
        assert len({e["params"].get("unique_ratio") for e in plan if e["selector"] == "duplicate"}) >= 3
        assert len({e["seed"] for e in plan if e["selector"] == "random"}) >= 3
        assert cfg["eval"]["name"] == "reference_nll" and cfg["report"]["reference_metric"] == "novelsum"


def test_exclude_selectors_reports_the_rest_beside_the_full_report(tmp_path):
    runs = pd.concat([_runs(n=6, seed=5), _runs(n=3, seed=6).assign(selector="duplicate",
                                                                     subset=["d0", "d1", "d2"])])
    runs.to_csv(tmp_path / "runs.csv", index=False)
    paths = regenerate(tmp_path / "runs.csv", tmp_path / "rest", exclude=["duplicate"], n_boot=50, n_perm=99)
    kept = pd.read_csv(paths["runs"])
    assert sorted(kept["subset"]) == [f"s{i}" for i in range(6)]
    table = pd.read_csv(paths["table_csv"]).set_index("metric")
    rest = runs[runs["selector"] == "random"]
    assert table.loc["novelsum", "pearson_r"] == pytest.approx(stats.pearsonr(rest["novelsum"],
                                                                              rest["performance"]).statistic)
    with pytest.raises(InputError, match="did you mean 'duplicate'"):
        regenerate(tmp_path / "runs.csv", tmp_path / "x", exclude=["duplicat"])
    with pytest.raises(InputError, match="full report it would replace"):
        regenerate(tmp_path / "runs.csv", tmp_path, exclude=["duplicate"])
    with pytest.raises(InputError, match="fewer than 3 subsets"):
        regenerate(tmp_path / "runs.csv", tmp_path / "y", exclude=["duplicate", "random"])
