"""How two performance targets of the same fine-tuned models agree: rank correlations per model and per subset.

The CPU studies correlate metrics with a judge-free proxy (``neg_reference_nll``); this checks that proxy against
the judged path on the very same models, e.g. the mini study's runs.csv against a second run of its fine-tunes
evaluated by the smoke judge (``experiment=mini_judged``)::

    divbench-agreement results/mini/runs.csv results/mini_judged/runs.csv --out results/mini/proxy_vs_judge.json

Both files come from ``divbench-study`` (one row per subset, per-replicate values in ``performance_replicates`` in
``train_seeds`` order). Models are matched on (base_model, subset, seed, train_seed); a model present in only one
file is an error, not a silent drop, unless ``--shared-only`` asks for the models both hold (a judged run of one
training replicate). Reported for both levels (each fine-tuned model both files hold; each subset's mean
over all of its replicates in each file): Spearman's rho with its asymptotic and permutation p-values (None below
4 points), Kendall's tau, and n. A correlation that is undefined (a target missing for some models, or the same
for all) leaves every statistic empty (null), with a warning and an ``undefined`` entry naming the models.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pandas as pd

from divcore.errors import InputError
from experiments.report.stats import MIN_PERMUTATION_SUBSETS, correlation, permutation_p, replicate_values

log = logging.getLogger(__name__)

MODEL_KEYS = ("base_model", "subset", "seed", "train_seed")


def model_performances(runs: pd.DataFrame, where: str) -> pd.Series:
    """One value per fine-tuned model, indexed by (base_model, subset, seed, train_seed)."""
    missing = [c for c in ("base_model", "subset", "seed", "performance", "performance_source") if c not in runs]
    if missing:
        raise InputError(f"{where}: columns {missing} missing; give a runs.csv written by divbench-study")
    rows = []
    for n, (_, r) in enumerate(runs.iterrows(), 2):  # line 1 is the header
        try:
            rows += _model_rows(r, "performance_replicates" in runs)
        except (TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            raise InputError(f"{where}:{n}: subset {r['subset']!r} (seed {r['seed']}): {e}; give a runs.csv "
                             "written by divbench-study, or regenerate it") from None
    frame = pd.DataFrame(rows, columns=[*MODEL_KEYS, "value"])
    return frame.set_index(list(MODEL_KEYS))["value"]


def _model_rows(r: pd.Series, has_replicates: bool) -> list[tuple]:
    """One (keys..., value) tuple per fine-tuned model of a runs.csv row."""
    values = replicate_values(r["performance_replicates"]) if has_replicates else []
    seeds = json.loads(r["train_seeds"]) if values and isinstance(r.get("train_seeds"), str) and r["train_seeds"] \
        else [None]
    if not values:
        try:
            values = [float(r["performance"])]
        except (TypeError, ValueError):
            raise ValueError(f"performance {r['performance']!r} is not a number") from None
    if len(seeds) != len(values):
        raise ValueError(f"{len(values)} replicate values but {len(seeds)} train_seeds; the file is inconsistent")
    return [(r["base_model"], r["subset"], int(r["seed"]), t, v) for t, v in zip(seeds, values, strict=True)]


def _defined(value: float | None) -> float | None:
    """None for an undefined (NaN) statistic: JSON has no NaN, and 0 would read as a result."""
    return None if value is None or not math.isfinite(value) else float(value)


def undefined_reason(x: pd.Series, y: pd.Series, where: tuple[str, str]) -> str | None:
    """Why the rank correlation of x and y is undefined (missing values or a constant column, the rows named),
    or None when it is defined."""
    for values, name in ((x, where[0]), (y, where[1])):
        missing = [k for k, v in values.items() if not math.isfinite(v)]
        if missing:
            return f"{name} has no performance for {len(missing)} model(s): {missing[:5]}"
        if len(values) and values.nunique() == 1:
            return (f"{name}'s performance is the same ({values.iloc[0]}) for all {len(values)} models "
                    f"{list(values.index)[:5]}")
    return None


def _rank_stats(x: pd.Series, y: pd.Series, n_perm: int, seed: int, level: str,
                where: tuple[str, str]) -> dict[str, Any]:
    rho, p = correlation("spearman", x.to_numpy(float), y.to_numpy(float))
    tau, tau_p = correlation("kendall", x.to_numpy(float), y.to_numpy(float))
    p_perm = permutation_p("spearman", x.to_numpy(float), y.to_numpy(float), n_perm, seed) \
        if len(x) >= MIN_PERMUTATION_SUBSETS else None  # too few points for a permutation test: undefined
    reason = undefined_reason(x, y, where)
    if reason:
        log.warning("%s: the rank correlation is undefined, its statistics left empty: %s", level, reason)
    return {"n": len(x), "spearman_rho": _defined(rho), "spearman_p": _defined(p), "spearman_p_perm": _defined(p_perm),
            "kendall_tau": _defined(tau), "kendall_p": _defined(tau_p)} | ({"undefined": reason} if reason else {})


def target_agreement(a: pd.DataFrame, b: pd.DataFrame, *, n_perm: int = 9999, seed: int = 0,
                     where: tuple[str, str] = ("a", "b"), shared_only: bool = False) -> dict[str, Any]:
    """Rank agreement of the ``performance`` of runs tables ``a`` and ``b`` over their fine-tuned models: the same
    models in both, or with ``shared_only`` the models both hold (e.g. one training replicate judged)."""
    va, vb = model_performances(a, where[0]), model_performances(b, where[1])
    only = sorted(set(va.index) ^ set(vb.index), key=str)
    if only and not shared_only:
        raise InputError(f"{where[0]} and {where[1]} do not hold the same fine-tuned models: {len(only)} differ "
                         f"(first: {only[:3]}); evaluate the same subsets and finetune.seeds in both, or pass "
                         "--shared-only to compare the models both hold")
    by_subset = [k for k in MODEL_KEYS if k != "train_seed"]
    # subset level: each target's mean over all of its replicates, on the subsets both evaluated
    ma, mb = va.groupby(level=by_subset).mean(), vb.groupby(level=by_subset).mean()
    ma, mb = ma[ma.index.isin(mb.index)], mb[mb.index.isin(ma.index)]
    va = va[va.index.isin(vb.index)]
    if len(va) < 2:
        raise InputError(f"{where[0]} and {where[1]} share {len(va)} fine-tuned models; nothing to compare")
    vb = vb.loc[va.index]
    return {"a": {"file": where[0], "performance_source": str(a["performance_source"].iloc[0])},
            "b": {"file": where[1], "performance_source": str(b["performance_source"].iloc[0])},
            "per_model": _rank_stats(va, vb, n_perm, seed, "per model", where),
            "per_subset_mean": _rank_stats(ma, mb.loc[ma.index], n_perm, seed, "per subset mean", where),
            "n_models_only_in_one": len(only), "n_perm": n_perm, "seed": seed}
