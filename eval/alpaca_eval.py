"""AlpacaEval aggregation through the ``alpaca_eval`` library itself (Dubois et al. 2024).

``alpaca_eval_summary`` turns judge annotations (``preference`` in [1, 2]: 1 the reference wins, 2 the model
wins, 1.5 a draw) into the leaderboard's numbers with ``alpaca_eval.metrics.get_winrate``, so a divbench number
and a leaderboard number are computed by the same code. The length-controlled win rate needs ``df_gamed.csv``,
which alpaca_eval downloads at run time; offline it is reported as unavailable rather than guessed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metrics.validation import InputError

log = logging.getLogger(__name__)


def _load(annotations: str | Path | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(annotations, (str, Path)):
        path = Path(annotations)
        if not path.exists():
            raise InputError(f"annotation file {path} does not exist")
        try:
            annotations = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: malformed JSON ({e.msg})") from None
    rows = list(annotations)
    if not rows or not all(isinstance(r, dict) and "preference" in r for r in rows):
        raise InputError("annotations must be a non-empty list of records with a 'preference' field")
    return rows


def alpaca_eval_summary(annotations: str | Path | Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Win rate (%), its standard error, discrete win rate, counts, and the length-controlled win rate when
    alpaca_eval can compute it. Annotations with no preference (judge failures) are excluded and counted."""
    from alpaca_eval.metrics import get_winrate

    rows = _load(annotations)
    valid = [r for r in rows if r["preference"] is not None]
    summary = {k: (float(v) if k not in ("n_wins", "n_wins_base", "n_draws", "n_total") else int(v))
               for k, v in get_winrate(valid).items()}
    summary["n_failed_annotations"] = len(rows) - len(valid)
    summary["length_controlled_winrate"] = None
    summary["length_controlled_note"] = ("not computed: alpaca_eval's length-controlled win rate needs "
                                         "df_gamed.csv from the hub; run with network access to get it")
    return summary
