"""Artifact store atomicity and the correlation report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiments.cache import ArtifactStore, stable_hash
from experiments.report import correlate, to_markdown, write_report
from metrics import InputError


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
    return pd.DataFrame({"subset": ["a", "a", "b", "c"], "m1": [1.0, 2.0, 3.0, 4.0], "m2": [4.0, 1.0, 3.0, 2.0],
                         "flat": [1.0] * 4, "performance": [0.1, 0.2, 0.25, 0.5]})


def test_correlation_matches_scipy_and_hand_values():
    table = correlate(_runs(), ["m1", "m2", "flat"]).set_index("metric")
    y = _runs()["performance"]
    assert table.loc["m1", "spearman_rho"] == pytest.approx(1.0)
    assert table.loc["m1", "pearson_r"] == pytest.approx(stats.pearsonr(_runs()["m1"], y).statistic)
    # m2 ranks (4, 1, 3, 2) against (1, 2, 3, 4): rho = 1 - 6 * (9 + 1 + 0 + 4) / (4 * 15) = -0.4
    assert table.loc["m2", "spearman_rho"] == pytest.approx(-0.4)
    assert np.isnan(table.loc["flat", "pearson_r"]) and np.isnan(table.loc["flat", "spearman_rho"])
    assert "undefined" in to_markdown(table.reset_index())


def test_too_few_subsets():
    with pytest.raises(InputError, match="at least 3 subsets"):
        correlate(_runs().head(2), ["m1"])


def test_report_files(tmp_path):
    paths = write_report(_runs(), ["m1", "m2"], tmp_path)
    assert pd.read_csv(paths["runs"]).shape == (4, 5)
    assert list(pd.read_csv(paths["table_csv"])["metric"]) == ["m1", "m2"]
    assert (tmp_path / "scatter_m1.png").stat().st_size > 1000 and (tmp_path / "scatter_m2.png").exists()
    assert not list(tmp_path.glob(".*"))
