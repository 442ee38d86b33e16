"""divbench's AlpacaEval summary reproduces the leaderboards shipped in the alpaca-eval package."""

from __future__ import annotations

from importlib import resources

import pandas as pd
import pytest

from divcore.errors import InputError
from eval import alpaca_eval_summary
from tests.conftest import SHARED

BOARDS = {"weighted_alpaca_eval_gpt4_turbo.json": "data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv",
          "alpaca_eval_gpt4.json": "data_AlpacaEval/alpaca_eval_gpt4_leaderboard.csv"}


def _board(rel: str) -> pd.DataFrame:
    return pd.read_csv(resources.files("alpaca_eval") / "leaderboards" / rel, index_col=0)


def test_summary_reproduces_every_leaderboard_row():
    checked = 0
    for model_dir in sorted((SHARED / "data" / "alpaca_eval" / "annotations").iterdir()):
        for file, board in BOARDS.items():
            if not (model_dir / file).exists():
                continue
            board_df = _board(board)
            if model_dir.name not in board_df.index:  # text_davinci_003 is not on the shipped 2.0 board
                continue
            expected = board_df.loc[model_dir.name]
            got = alpaca_eval_summary(model_dir / file)
            assert got["win_rate"] == pytest.approx(expected["win_rate"], abs=0.01), (model_dir.name, file)
            assert got["standard_error"] == pytest.approx(expected["standard_error"], abs=0.01)
            if "discrete_win_rate" in expected and pd.notna(expected["discrete_win_rate"]):
                assert got["discrete_win_rate"] == pytest.approx(expected["discrete_win_rate"], abs=0.01)
            assert got["n_total"] == expected["n_total"]
            checked += 1
    assert checked == 7  # 4 models on the 2.0 board, 3 on the 1.0 board


def test_hand_values_and_bad_input():
    got = alpaca_eval_summary([{"preference": 2}, {"preference": 1}, {"preference": 1.5}, {"preference": None}])
    assert got["win_rate"] == pytest.approx(50.0) and got["n_total"] == 3 and got["n_failed_annotations"] == 1
    assert got["length_controlled_winrate"] is None and "df_gamed" in got["length_controlled_note"]
    with pytest.raises(InputError, match="preference"):
        alpaca_eval_summary([{"output": "x"}])
    with pytest.raises(InputError, match="does not exist"):
        alpaca_eval_summary("/nonexistent.json")
