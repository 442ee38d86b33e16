"""Artifact store atomicity and the correlation report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from divcore.errors import InputError
from divcore.hashing import stable_hash
from divcore.ownership import MANIFEST
from experiments.engine.store import ArtifactStore
from experiments.report.tables import correlate, regenerate, to_markdown, write_report


def test_store_is_content_addressed_and_atomic(tmp_path):
    store = ArtifactStore(tmp_path)
    spec = {"a": 1, "b": [1, 2]}
    assert stable_hash({"b": [1, 2], "a": 1}) == stable_hash(spec)
    with pytest.raises(RuntimeError):
        with store.build("stage", spec) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("killed")
    assert not store.is_complete("stage", spec) and not store.path("stage", spec).exists()
    assert list((tmp_path / "stage").iterdir()) == []
    with store.build("stage", spec) as tmp:
        (tmp / "out.txt").write_text("done")
    assert store.is_complete("stage", spec)
    assert (store.path("stage", spec) / "out.txt").read_text() == "done"
    assert store.path("stage", {"a": 2}) != store.path("stage", spec)


def _runs() -> pd.DataFrame:
    return pd.DataFrame({"subset": ["a", "a", "b", "c"], "selector": ["a", "a", "b", "c"], "seed": [0, 1, 0, 0],
                         "m1": [1.0, 2.0, 3.0, 4.0], "m2": [4.0, 1.0, 3.0, 2.0], "flat": [1.0] * 4,
                         "performance": [0.1, 0.2, 0.25, 0.5]})


def test_correlation_matches_scipy_and_hand_values():
    table = correlate(_runs(), ["m1", "m2", "flat"], n_boot=200).set_index("metric")
    y = _runs()["performance"]
    assert table.loc["m1", "spearman_rho"] == pytest.approx(1.0)
    assert table.loc["m1", "kendall_tau"] == pytest.approx(1.0)
    assert table.loc["m1", "pearson_r"] == pytest.approx(stats.pearsonr(_runs()["m1"], y).statistic)
    # m2 ranks (4, 1, 3, 2) against (1, 2, 3, 4): rho = 1 - 6 * (9 + 1 + 0 + 4) / (4 * 15) = -0.4
    assert table.loc["m2", "spearman_rho"] == pytest.approx(-0.4)
    # concordant pairs 2, discordant 4 of 6: tau = -2/6
    assert table.loc["m2", "kendall_tau"] == pytest.approx(-1 / 3)
    assert table.loc["m2", "pearson_ci_low"] <= table.loc["m2", "pearson_r"] <= table.loc["m2", "pearson_ci_high"]
    assert np.isnan(table.loc["flat", "pearson_r"]) and np.isnan(table.loc["flat", "spearman_rho"])
    assert np.isnan(table.loc["flat", "pearson_ci_low"])
    assert "undefined" in to_markdown(table.reset_index())


def test_per_base_model_and_mean():
    runs = pd.concat([_runs().assign(base_model="llama"), _runs().assign(base_model="qwen", m1=[4.0, 3, 2, 1])])
    table = correlate(runs, ["m1"], n_boot=50)
    by = table.set_index("base_model")["spearman_rho"]
    assert by["llama"] == pytest.approx(1.0) and by["qwen"] == pytest.approx(-1.0) and by["mean"] == pytest.approx(0)


def test_too_few_subsets():
    with pytest.raises(InputError, match="at least 3 subsets"):
        correlate(_runs().head(2), ["m1"])


def test_report_files_and_exact_regeneration(tmp_path):
    paths = write_report(_runs().rename(columns={"m1": "novelsum", "m2": "vendi"}), ["novelsum", "vendi"],
                         tmp_path, n_boot=100, seed=3)
    assert pd.read_csv(paths["runs"]).shape == (4, 8)
    table = pd.read_csv(paths["table_csv"])
    assert list(table["metric"]) == ["novelsum", "vendi"]
    assert table.loc[0, "paper_reported"].startswith("0.97 (paper")
    assert (tmp_path / "scatter_novelsum.png").stat().st_size > 1000 and (tmp_path / "scatter_vendi.png").exists()
    assert "\\textbf{1.000}" in paths["table_tex"].read_text()
    assert [p.name for p in tmp_path.glob(".*")] == [MANIFEST]  # no temporary file left, the manifest kept
    first = paths["table_md"].read_text()
    paths["table_md"].unlink()
    regenerate(paths["runs"], n_boot=100, seed=3)
    assert paths["table_md"].read_text() == first
    # hand-computed Pearson r: 0.625 / sqrt(5 * 0.086875) = 0.948 and -0.275 / sqrt(5 * 0.086875) = -0.417
    expected = ("| all | novelsum | 0.948 |", "| all | vendi | -0.417 |")
    assert all(line in first for line in expected)


def test_regenerate_rejects_bad_tables(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        regenerate(tmp_path / "runs.csv")
    _runs().to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(InputError, match="older divbench"):
        regenerate(tmp_path / "runs.csv")
    _runs().drop(columns="performance").assign(schema=1).to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(InputError, match="lacks column"):
        regenerate(tmp_path / "runs.csv")
