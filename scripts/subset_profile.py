"""Add the subset-profile columns a newer study records (supervised_tokens, code_share, multi_turn_share) to a
runs.csv written before them, without fine-tuning anything.

Rebuilds (or reuses) the study's pool, embeddings, signals and subsets in the given cache, checks every rebuilt
subset against runs.csv (same unique rows, same metric values up to float32 rounding: the same subsets), then
writes runs.csv with the profile columns added; regenerate the report afterwards (``divbench-report
runs=<runs.csv>``). With ``--untuned``, a study evaluated by the reference NLL alone also gets
``untuned_performance``: the untuned base model's -NLL on the same answer sample (the scatter plots' reference
line).

    python3 scripts/subset_profile.py --runs results/mini/runs.csv --untuned experiment=mini cache_dir=/tmp/minicache
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from divcore.errors import InputError
from divcore.io import atomic_write
from experiments.engine.config import CONFIG_DIR
from experiments.engine.dag import subset_plan
from experiments.engine.pipeline import run, selected_entries, subset_profile, supervised_tokens_of
from experiments.report.tables import metric_columns

log = logging.getLogger("divbench.subset_profile")
ADDED = ("supervised_tokens", "code_share", "multi_turn_share")


def profiles(cfg: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (subset, seed): the profile of the subset the study's config selects, checked against runs."""
    entries = selected_entries(subset_plan(cfg["selection"]), None)
    outcome = run(cfg, until="metrics", entries=entries)  # pool, embeddings, signals, subsets, metrics: no training
    columns, memo, rows = metric_columns(runs), {}, []
    for entry, done in zip(entries, outcome.outputs, strict=True):
        indices = done["subset"]
        sub = [done["pool"][i] for i in indices]
        row = runs[(runs["subset"] == entry["label"]) & (runs["seed"] == entry["seed"])]
        if len(row) != 1:
            raise InputError(f"runs.csv has {len(row)} rows for {entry['label']} seed {entry['seed']}: the config "
                             "is not the study's")
        _check_same_subset(entry, row.iloc[0], done["metrics"], len(set(indices)), columns)
        rows.append({"subset": entry["label"], "seed": entry["seed"]} | subset_profile(sub)
                    | {"supervised_tokens": supervised_tokens_of(cfg, entry, sub, memo)})
    return pd.DataFrame(rows)


def _check_same_subset(entry: dict, row: pd.Series, measured: dict, unique: int, columns: list[str]) -> None:
    """The rebuilt subset is the one runs.csv measured: same unique rows, every metric within float32 rounding
    (1e-4 relative, 1e-6 absolute: another subset of 16 moves them by far more)."""
    bad = [c for c in columns if c in measured and not np.isclose(float(measured[c]), float(row[c]), rtol=1e-4,
                                                                  atol=1e-6, equal_nan=True)]
    if unique != row["unique_rows"] or bad:
        raise InputError(f"{entry['label']} seed {entry['seed']}: the rebuilt subset differs from runs.csv's "
                         f"(unique rows {unique} vs {row['unique_rows']}; metrics {bad[:3]}): not the same study")


def add_columns(runs: pd.DataFrame, profile: pd.DataFrame) -> pd.DataFrame:
    """runs with the profile's new columns after ``mean_response_chars``; existing profile columns must agree."""
    merged = runs.merge(profile, on=["subset", "seed"], how="left", suffixes=("", "_rebuilt"), validate="many_to_one")
    if "mean_response_chars_rebuilt" in merged and not np.allclose(merged["mean_response_chars"],
                                                                   merged["mean_response_chars_rebuilt"]):
        raise InputError("mean_response_chars of the rebuilt subsets differs from runs.csv's: not the same subsets")
    out = merged[list(runs.columns)].copy()
    at = list(out.columns).index("mean_response_chars") + 1 if "mean_response_chars" in out else len(out.columns)
    for offset, col in enumerate(c for c in ADDED if c not in runs):
        out.insert(at + offset, col, merged[col].to_numpy())
    return out


def untuned_performance(cfg: dict) -> float:
    """The untuned base model's performance under the study's evaluator, when that is the reference NLL alone."""
    from divcore.models import resolve_model
    from eval.benchmarks import reference_examples, reference_nll_config
    from eval.reference_nll import reference_nll

    ev = cfg["eval"]
    if ev["name"] != "reference_nll":
        raise InputError(f"--untuned needs a study evaluated by the reference NLL alone, not eval={ev['name']}")
    nll_cfg = reference_nll_config(ev)
    model = resolve_model(cfg["finetune"]["base_model"], cfg["cache_dir"])
    result = reference_nll(model, reference_examples(nll_cfg), max_length=int(nll_cfg.get("max_length", 512)),
                           device=nll_cfg.get("device", "cpu"))
    log.info("untuned %s: -NLL %.6f over %d answers", cfg["finetune"]["base_model"], result["performance"],
             result["n_examples"])
    return float(result["performance"])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, type=Path, help="the study's runs.csv (rewritten in place)")
    parser.add_argument("--untuned", action="store_true", help="add untuned_performance (reference-NLL studies)")
    parser.add_argument("overrides", nargs="*", help="the study's Hydra overrides, e.g. experiment=mini cache_dir=...")
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = OmegaConf.to_container(compose("study", overrides=[*args.overrides, "logger.enabled=false"]),
                                     resolve=True)
    runs = pd.read_csv(args.runs)
    try:
        out = add_columns(runs, profiles(cfg, runs))
        if args.untuned:
            out["untuned_performance"] = untuned_performance(cfg)
    except InputError as e:
        log.error("%s", e)
        return 2
    atomic_write(args.runs, out.to_csv(index=False))
    log.info("added %s to %s (%d rows)", [c for c in ADDED if c not in runs], args.runs, len(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
