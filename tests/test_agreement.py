"""divbench-agreement: rank agreement of two performance targets over the same fine-tuned models."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from divcore.errors import InputError
from experiments.cli.agreement import main
from experiments.report.agreement import model_performances, target_agreement


def runs(values: list[list[float]], source: str) -> pd.DataFrame:
    """A runs.csv-shaped table: subsets A, B, C, ... (selection seed 0), replicates with train seeds 1, 2, ..."""
    return pd.DataFrame([{"base_model": "m", "subset": chr(65 + i), "seed": 0, "performance": sum(v) / len(v),
                          "performance_source": source, "performance_replicates": json.dumps(v),
                          "train_seeds": json.dumps(list(range(1, len(v) + 1)))} for i, v in enumerate(values)])


PROXY = runs([[1, 2], [3, 4], [5, 6], [7, 8]], "neg_reference_nll")
JUDGE = runs([[2, 1], [4, 3], [6, 5], [8, 7]], "raw:alpaca_eval_win_rate")


def test_models_are_matched_by_subset_and_training_seed() -> None:
    values = model_performances(JUDGE, "judge")
    assert values.loc[("m", "A", 0, 1)] == 2 and values.loc[("m", "A", 0, 2)] == 1
    assert len(values) == 8


def test_rank_agreement_matches_hand_computed_values() -> None:
    out = target_agreement(PROXY, JUDGE, n_perm=9999, seed=0)
    # every model's rank is off by one: sum d^2 = 8, rho = 1 - 6 * 8 / (8 * 63) = 19/21
    assert out["per_model"]["spearman_rho"] == pytest.approx(19 / 21)
    # 4 discordant pairs (the swapped replicates) of 28: tau = (24 - 4) / 28
    assert out["per_model"]["kendall_tau"] == pytest.approx(20 / 28)
    assert out["per_model"]["n"] == 8
    # the subset means agree exactly; exact permutation test over 4! orderings: 2 of 24 reach |rho| = 1
    assert out["per_subset_mean"]["spearman_rho"] == pytest.approx(1.0)
    assert out["per_subset_mean"]["spearman_p_perm"] == pytest.approx(2 / 24)
    assert out["b"]["performance_source"] == "raw:alpaca_eval_win_rate"


def test_different_models_are_an_error_naming_them() -> None:
    with pytest.raises(InputError, match="same fine-tuned models"):
        target_agreement(PROXY, runs([[1, 2], [3, 4], [5, 6]], "x"))


def test_cli_writes_the_json_or_nothing(tmp_path) -> None:
    PROXY.to_csv(tmp_path / "a.csv", index=False)
    JUDGE.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "agree.json"
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["per_model"]["n"] == 8
    bad = tmp_path / "bad.json"
    runs([[1, 2]], "x").to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(SystemExit) as exit_:  # as every command: a failure exits with its code
        main([str(tmp_path / "a.csv"), str(tmp_path / "c.csv"), "--out", str(bad)])
    assert exit_.value.code == 2
    assert not bad.exists()


def test_shared_only_compares_the_models_both_hold() -> None:
    one_replicate = runs([[2], [4], [6], [8]], "raw:alpaca_eval_win_rate")  # train seed 1 of each subset
    out = target_agreement(PROXY, one_replicate, shared_only=True)
    assert out["per_model"]["n"] == 4 and out["n_models_only_in_one"] == 4
    assert out["per_model"]["spearman_rho"] == pytest.approx(1.0)  # proxy 1, 3, 5, 7 vs 2, 4, 6, 8
    # subsets: the proxy's mean over both replicates (1.5, 3.5, 5.5, 7.5) against the one judged replicate
    assert out["per_subset_mean"]["n"] == 4 and out["per_subset_mean"]["spearman_rho"] == pytest.approx(1.0)
    swapped = runs([[8], [4], [6], [2]], "raw:alpaca_eval_win_rate")
    out = target_agreement(PROXY, swapped, shared_only=True)
    # models 1, 3, 5, 7 vs 8, 4, 6, 2: ranks (1,2,3,4) vs (4,2,3,1), sum d^2 = 18, rho = 1 - 6*18/60 = -0.8
    assert out["per_model"]["spearman_rho"] == pytest.approx(-0.8)
    assert out["per_subset_mean"]["spearman_rho"] == pytest.approx(-0.8)
