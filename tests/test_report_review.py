"""What a reviewer checks in the report: the contrast test against published worked examples, block resampling
against brute-force loops, metric families counted once, covariates, decision accuracy, the paper's table and
the HTML page (rendered in headless Chromium)."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiments.report import contrasts as ct
from experiments.report import decisions as dec
from experiments.report import families as fam
from experiments.report import resampling as rs
from experiments.report import stats as st
from experiments.report.tables import correlate, regenerate, write_report
from metrics import InputError


# Published worked examples (cocor's test suite: Silver, Hittner & May 2006's depcor program; Steiger 1980, p. 249).
def test_williams_t_matches_depcor():
    t, p = ct.williams_t(0.3, 0.4, 0.5, 100)
    assert round(t, 4) == -1.0767 and round(p, 4) == 0.2843


def test_steiger_z_matches_depcor_and_steiger_1980():
    z, p = ct.steiger_z(0.3, 0.4, 0.5, 100)
    assert round(z, 4) == -1.0718 and round(p, 4) == 0.2838
    z, _ = ct.steiger_z(0.4, 0.5, 0.1, 103)  # Steiger's case A (the paper prints -.8913 from a rounded covariance)
    assert z == pytest.approx(-0.8887185, abs=1e-7)


def test_contrast_tests_are_undefined_at_the_edges():
    assert np.isnan(ct.williams_t(0.5, 0.4, 1.0, 20)[0]) and np.isnan(ct.steiger_z(0.5, 0.4, 0.3, 3)[0])
    assert ct.williams_t(0.4, 0.4, 0.2, 30)[0] == 0.0


def test_holm_by_hand():
    # p = (0.01, 0.04, 0.03): sorted 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone (0.03, 0.06, 0.06)
    np.testing.assert_allclose(ct.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    q = ct.holm([0.5, np.nan, 0.2])
    assert np.isnan(q[1]) and q[[0, 2]] == pytest.approx([0.5, 0.4])  # undefined is no test; capped at 1


def _study(n_labels: int = 8, seed: int = 0) -> pd.DataFrame:
    """Selector labels with 1-3 seeds each (the blocks), two training replicates per subset, one exact duplicate
    column, one constant column and a covariate."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_labels):
        for s in range(1 + g % 3):
            novelsum = g / n_labels + rng.normal(0, 0.05)
            perf = 0.5 * novelsum + rng.normal(0, 0.1)
            reps = [perf + rng.normal(0, 0.01), perf + rng.normal(0, 0.01)]
            rows.append({"subset": f"sel{g}", "selector": "duplicate" if g == 0 else f"sel{g}", "seed": s,
                         "novelsum": novelsum, "vendi": rng.normal(),
                         "log_determinant": novelsum * 2 + rng.normal(0, 0.1),
                         "ttr": 0.3, "supervised_tokens": 1000 + 200 * novelsum + rng.normal(0, 30),
                         "performance": float(np.mean(reps)), "n_replicates": 2,
                         "performance_replicates": json.dumps(reps), "schema": 1})
    runs = pd.DataFrame(rows)
    runs["novelsum_grid[neighbors=10,density_power=0.5,distance_power=1]"] = runs["novelsum"] * (1 + 1e-9)
    return runs


METRICS = ["novelsum", "vendi", "log_determinant", "ttr",
           "novelsum_grid[neighbors=10,density_power=0.5,distance_power=1]"]


def test_contrast_columns_match_williams_and_are_adjusted_once_per_distinct_metric():
    runs = _study()
    table = correlate(runs, METRICS, n_boot=200, n_perm=0, reference="novelsum").set_index("metric")
    y, ref = runs["performance"].to_numpy(), runs["novelsum"].to_numpy()
    for metric in ("vendi", "log_determinant"):
        x = runs[metric].to_numpy()
        r = [stats.pearsonr(a, b).statistic for a, b in ((x, y), (ref, y), (x, ref))]
        t, p = ct.williams_t(*r, len(y))
        row = table.loc[metric]
        assert row["pearson_contrast_diff"] == pytest.approx(r[0] - r[1]) == pytest.approx(row["pearson_diff_vs_ref"])
        assert row["pearson_contrast_williams_t"] == pytest.approx(t) and row["pearson_contrast_p"] == pytest.approx(p)
        assert row["pearson_contrast_steiger_z"] == pytest.approx(ct.steiger_z(*r, len(y))[0])
    # the family: vendi and log_determinant (the reference, its grid alias and the constant ttr are no tests)
    p = table.loc[["vendi", "log_determinant"], "pearson_contrast_p"].to_numpy()
    np.testing.assert_allclose(table.loc[["vendi", "log_determinant"], "pearson_contrast_q"],
                               stats.false_discovery_control(p))
    np.testing.assert_allclose(table.loc[["vendi", "log_determinant"], "pearson_contrast_p_holm"], ct.holm(p))
    assert table.loc[["novelsum", "ttr"], "pearson_contrast_p"].isna().all()


@pytest.mark.parametrize("reference", [None, "ttr_absent"])
def test_no_reference_no_contrast_columns(reference):
    table = correlate(_study(), ["novelsum", "vendi"], n_boot=50, n_perm=0, reference=reference)
    assert not [c for c in table if "_contrast_" in c]


def test_block_bootstrap_matches_a_brute_force_loop():
    runs = _study(n_labels=6)
    labels = runs["subset"].to_numpy(dtype=object)
    x, y = runs["log_determinant"].to_numpy(), runs["performance"].to_numpy()
    codes, uniques = pd.factorize(pd.Series(labels), sort=True)
    counts = np.random.default_rng(7).multinomial(len(uniques), np.full(len(uniques), 1 / len(uniques)), size=60)
    for kind, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        fast = rs.block_bootstrap(kind, x, y, labels, 60, seed=7)
        slow = []
        for row in counts:  # concatenate each drawn block's rows, as often as it was drawn
            idx = np.concatenate([np.flatnonzero(codes == g).repeat(c) for g, c in enumerate(row)])
            slow.append(fn(x[idx], y[idx]).statistic if np.ptp(x[idx]) and np.ptp(y[idx]) else np.nan)
        np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_report_intervals_resample_whole_selector_labels():
    runs = _study(n_labels=6)
    table = correlate(runs, ["log_determinant"], n_boot=400, seed=3, n_perm=0).iloc[0]
    boot = rs.block_bootstrap("pearson", runs["log_determinant"].to_numpy(), runs["performance"].to_numpy(),
                              runs["subset"].to_numpy(dtype=object), 400, seed=3)
    assert (table["pearson_ci_low"], table["pearson_ci_high"]) == pytest.approx(st.percentile_interval(boot))
    assert table["n_blocks"] == 6 and table["n"] == len(runs)
    iid = correlate(runs, ["log_determinant"], n_boot=400, seed=3, n_perm=0, block="none").iloc[0]
    assert iid["n_blocks"] == len(runs) and iid["pearson_ci_low"] != table["pearson_ci_low"]


def test_block_permutation_is_the_test_of_block_means():
    runs = _study(n_labels=7)
    x, y = runs["log_determinant"].to_numpy(), runs["performance"].to_numpy()
    labels = runs["subset"].to_numpy(dtype=object)
    means = runs.groupby("subset")[["log_determinant", "performance"]].mean()
    # 7 blocks: 7! = 5040 <= 9999 pairings, so the test is exact; brute force over every permutation
    a, b = means["log_determinant"].to_numpy(), means["performance"].to_numpy()
    observed = stats.pearsonr(a, b).statistic
    null = np.array([stats.pearsonr(a, b[list(p)]).statistic for p in itertools.permutations(range(7))])
    eps = 1e-12
    brute = min(1.0, 2 * min((null >= observed - eps).mean(), (null <= observed + eps).mean()))
    assert rs.block_permutation_p("pearson", x, y, labels, 9999, seed=0) == pytest.approx(brute)
    # one subset per block: the ordinary permutation test
    single = np.array([f"r{i}" for i in range(len(x))], dtype=object)
    assert rs.block_permutation_p("pearson", x, y, single, 999, 0) == st.permutation_p("pearson", x, y, 999, 0)


def test_leave_one_block_out_matches_a_loop(tmp_path):
    runs = _study(n_labels=5)
    paths = write_report(runs, ["novelsum", "vendi"], tmp_path / "r", n_boot=100, n_perm=99, reference_metric=None)
    sens = pd.read_csv(paths["sensitivity_csv"])
    assert set(sens["left_out"]) == set(runs["subset"]) and set(sens["metric"]) == {"novelsum", "vendi"}
    for label in ("sel0", "sel3"):
        rest = runs[runs["subset"] != label]
        row = sens[(sens["left_out"] == label) & (sens["metric"] == "vendi")].iloc[0]
        assert row["pearson_r"] == pytest.approx(stats.pearsonr(rest["vendi"], rest["performance"]).statistic)
        assert row["n"] == len(rest)


def test_identical_and_constant_columns_are_one_metric_and_no_test():
    runs = _study()
    families = fam.metric_families(runs, METRICS).set_index("metric")
    grid = METRICS[-1]
    assert families.loc["novelsum", "same_as"] == grid and families.loc[grid, "family"] == fam.GRID
    assert families.loc["ttr", "constant"] and families.loc["vendi", "same_as"] == ""
    assert not fam.identical(np.array([1.0, 2.0]), np.array([1.0, 2.00001]))
    assert fam.identical(np.array([1000.0, 2.0]), np.array([1000.0005, 2.0]))  # relative beyond 1
    # BH within the main family over its distinct defined metrics: novelsum, vendi, log_determinant (not ttr,
    # not the grid column, which is in its own family where it is the only test)
    main = ["novelsum", "vendi", "log_determinant", "ttr", "vendi_again"]
    table = correlate(runs.assign(vendi_again=runs["vendi"]), main + [grid], n_boot=50, n_perm=0).set_index("metric")
    p = table.loc[["novelsum", "vendi", "log_determinant"], "pearson_p"].to_numpy()
    np.testing.assert_allclose(table.loc[["novelsum", "vendi", "log_determinant"], "pearson_q"],
                               stats.false_discovery_control(p))
    assert table.loc["vendi_again", "pearson_q"] == table.loc["vendi", "pearson_q"]  # reported once, same q
    assert table.loc[grid, "pearson_q"] == pytest.approx(table.loc[grid, "pearson_p"])


def test_decision_accuracy_matches_a_loop():
    runs = _study(n_labels=5)
    x, y = runs["log_determinant"].to_numpy(), runs["performance"].to_numpy()
    floor = st.noise_floor_of(runs)
    se = floor["within_sd_pooled"] * np.sqrt(2 / 2)  # two replicates each: sqrt(1/2 + 1/2)
    right = total = 0.0
    for i, j in itertools.combinations(range(len(y)), 2):
        if abs(y[i] - y[j]) > dec.Z * se:
            total += 1
            right += 0.5 if x[i] == x[j] else float(np.sign(x[i] - x[j]) == np.sign(y[i] - y[j]))
    row = correlate(runs, ["log_determinant", "ttr"], n_boot=300, n_perm=0).set_index("metric")
    assert row.loc["log_determinant", "decision_accuracy"] == pytest.approx(right / total)
    assert row.loc["log_determinant", "n_decisions"] == total
    assert np.isnan(row.loc["ttr", "decision_accuracy"])  # a constant metric decides nothing
    low, high = row.loc["log_determinant", ["decision_accuracy_ci_low", "decision_accuracy_ci_high"]]
    assert 0 <= low <= right / total <= high <= 1
    # the resampled accuracy of one weighted resample is that of its concatenated rows
    w = np.array([[2.0, 0, 1] + [1] * (len(y) - 3)])
    idx = np.repeat(np.arange(len(y)), w[0].astype(int))
    pairs = dec.decision_pairs(runs.iloc[idx].reset_index(drop=True), floor["within_sd_pooled"])
    assert dec.decision_accuracy(x, y, dec.decision_pairs(runs, floor["within_sd_pooled"]), w)[0] == pytest.approx(
        dec.decision_accuracy(x[idx], y[idx], pairs))


def test_covariates_partial_correlations_and_their_own_table(tmp_path):
    runs = _study()
    table = correlate(runs, ["vendi"], n_boot=50, n_perm=0).set_index("metric")  # default: the profile columns
    x, y, z = (runs[c].to_numpy() for c in ("vendi", "performance", "supervised_tokens"))
    fit = lambda v: v - np.polyval(np.polyfit(z, v, 1), z)  # noqa: E731
    assert table.loc["vendi", "pearson_partial_supervised_tokens"] == pytest.approx(
        stats.pearsonr(fit(x), fit(y)).statistic)
    listed = correlate(runs, ["vendi"], n_boot=50, n_perm=0, covariates=["log_determinant"])
    assert "pearson_partial_log_determinant" in listed and "pearson_partial_supervised_tokens" not in listed
    paths = write_report(runs, ["vendi", "novelsum"], tmp_path / "r", n_boot=100, n_perm=99,
                         reference_metric="novelsum")
    cov = pd.read_csv(paths["covariates_csv"]).set_index("covariate")
    assert cov.loc["supervised_tokens", "pearson_r"] == pytest.approx(stats.pearsonr(z, y).statistic)


def test_paper_table_in_the_paper_order_with_provenance(tmp_path):
    runs = _study()
    paths = write_report(runs, METRICS, tmp_path / "r", n_boot=200, n_perm=99, reference_metric="novelsum")
    paper = pd.read_csv(paths["paper_table_csv"])
    assert list(paper["metric"]) == ["vendi", "log_determinant", "novelsum"]  # distinct, defined, paper's order
    assert paper.loc[2, "paper_provenance"].split("; ")[0] == "paper"
    assert paper.loc[2, "average"] == pytest.approx(np.mean([paper.loc[2, "all:pearson_r"],
                                                             paper.loc[2, "all:spearman_rho"]]))
    md = paths["paper_table_md"].read_text()
    assert "| Metric | all Pearson | all Spearman | Avg. | Paper |" in md
    assert "NovelSum<br><sub>= NovelSum grid K=10 B=0.5 A=1</sub>" in md and "0.97 (paper:" in md
    tex = paths["paper_table_tex"].read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") and "\\scriptsize" in tex
    # 8 blocks < 10: no interval anywhere in the paper's table, and the note says why
    assert not re.search(r"\[-?\d\.\d\d, ", md) and "fewer than 10" in md


def test_results_folder_keeps_what_the_report_does_not_write(tmp_path):
    out = tmp_path / "study"
    write_report(_study(), ["novelsum", "vendi"], out, n_boot=50, n_perm=0)
    (out / "README.md").write_text("notes")
    (out / "without_duplicates").mkdir()
    (out / "without_duplicates" / "table.csv").write_text("x")
    (out / "scatter_gone.png").write_bytes(b"old plot")
    write_report(_study(), ["novelsum"], out, n_boot=50, n_perm=0)
    assert (out / "README.md").read_text() == "notes" and (out / "without_duplicates" / "table.csv").exists()
    assert not (out / "scatter_gone.png").exists() and not (out / "scatter_vendi.png").exists()


def test_regenerate_takes_block_and_covariates(tmp_path):
    _study().to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(InputError, match="did you mean 'supervised_tokens'"):
        regenerate(tmp_path / "runs.csv", n_boot=20, covariates=["supervised_token"])
    paths = regenerate(tmp_path / "runs.csv", n_boot=50, n_perm=0, block="none")
    assert (pd.read_csv(paths["table_csv"])["n_blocks"] == len(_study())).all()


CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
for (const level of ['error', 'warn']) {
  const orig = console[level];
  console[level] = (...a) => { window.__errors.push(level + ': ' + a.join(' ')); orig.apply(console, a); };
}
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => i.complete ? i.naturalWidth : -1);
  document.title = 'CHECK ' + JSON.stringify({imgs, errors: window.__errors});
});
</script>"""


@pytest.mark.slow  # a browser process
def test_report_html_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/install.sh installs it)")
    paths = write_report(_study(n_labels=11), METRICS, tmp_path / "r", n_boot=200, n_perm=99,
                         reference_metric="novelsum")
    page = paths["report_html"].read_text()
    assert "http://" not in page and "https://" not in page and page.count("data:image/png;base64,") >= 3
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + CHECK, 1))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(re.search(r"<title>CHECK (.*?)</title>", done.stdout).group(1).replace("&quot;", '"'))
    assert result["errors"] == [] and not re.search(r":CONSOLE", done.stderr)
    assert len(result["imgs"]) == page.count("<img") and min(result["imgs"]) > 0  # every image decoded


def test_subset_profile_script_adds_columns_and_refuses_other_subsets():
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("subset_profile", ROOT / "scripts" / "subset_profile.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = pd.DataFrame({"subset": ["a", "b"], "seed": [0, 0], "mean_response_chars": [10.0, 20.0],
                         "performance": [1.0, 2.0]})
    profile = pd.DataFrame({"subset": ["b", "a"], "seed": [0, 0], "mean_response_chars": [20.0, 10.0],
                            "supervised_tokens": [7, 5], "code_share": [0.5, 0.0], "multi_turn_share": [1.0, 0.0]})
    out = script.add_columns(runs, profile)
    assert list(out.columns) == ["subset", "seed", "mean_response_chars", "supervised_tokens", "code_share",
                                 "multi_turn_share", "performance"]
    assert list(out["supervised_tokens"]) == [5, 7]
    with pytest.raises(InputError, match="not the same subsets"):
        script.add_columns(runs, profile.assign(mean_response_chars=[21.0, 10.0]))
