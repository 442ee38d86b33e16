"""Hydra entry point ``divbench-select``: one subset of a pool, exported (``experiments.data.export``).

``divbench-select pool.path=text/ embed=precomputed embed.path=emb/ selector=novelselect size=1000 out=ns1k``

The pool, embedding, signals, subset and metrics stages are the study's own (``experiments.engine.pipeline``) on
the same artifact cache, so a selection a study already made (same pool, embeddings, selector, parameters, seed
and size) is read back, not recomputed. ``from_study=<results_dir>`` exports every subset of a finished study instead.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR

log = logging.getLogger("divbench.select")


def _content_id(store: Any, path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256, through the store's remembered hashes."""
    return store.hashes.fingerprint(path)[:16]


def provenance(cfg: dict[str, Any], store: Any, specs: dict, entry: dict[str, Any], indices: list[int],
               n_pool: int) -> dict[str, Any]:
    """Who picked these rows, how, from what: selector, parameters (defaults filled in), seed, and content
    fingerprints of the pool rows and their embeddings (stable outside this machine's cache)."""
    import selection
    from experiments.engine.stages import Embeddings, PoolRows
    from selection.registry import effective_params

    embed = {k: v for k, v in cfg["embed"].items() if k not in ("batch_size", "device")}
    return {"selector": entry["selector"], "params": effective_params(selection.get_selector(entry["selector"]),
                                                                       entry["params"]),
            "seed": entry["seed"], "size": entry["size"], "pool_size": n_pool, "unique_rows": len(set(indices)),
            "pool_fingerprint": _content_id(store, store.path("pool", specs["pool"]) / PoolRows.FILE),
            "embedding_fingerprint": _content_id(store, store.path("embed", specs["embed"]) / Embeddings.FILE),
            "pool": cfg["pool"], "embed": embed, "study": cfg.get("study"),
            "cache_keys": {s: store.path(s, specs[s]).name for s in ("pool", "embed", "subset")}}


def _entry(cfg: dict[str, Any]) -> dict[str, Any]:
    """The one subset asked for, validated (selector, parameters, size) before any work."""
    import selection
    from divcore.errors import InputError
    from metrics.validation import check_positive_int
    from selection.registry import check_params

    if cfg.get("size") is None:
        raise InputError("size is required: the number of rows to select (size=1000)")
    spec = selection.get_selector(cfg["selector"])
    params = dict(cfg.get("params") or {})
    check_params(spec, params)
    if cfg.get("push_to_hub") is not None and not isinstance(cfg["push_to_hub"], str):
        raise InputError(f"push_to_hub must be a hub repo id such as user/my-subset, got {cfg['push_to_hub']!r}")
    return {"label": cfg["selector"], "selector": cfg["selector"], "params": params, "seed": int(cfg["seed"]),
            "size": check_positive_int(cfg["size"], "size")}


def select_one(cfg: dict[str, Any]) -> Path:
    """Select (or read back) one subset and export it to ``cfg['out']``."""
    import selection
    from divcore.errors import InputError
    from experiments.data.export import check_export_out, export_subset, push_to_hub, write_map
    from experiments.data.pools import check_format_config
    from experiments.embedding.backends import check_embed_config
    from experiments.engine.pipeline import (
        SubsetRunner,
        check_metric_configs,
        check_signal_needs,
        embed_stage,
        pool_stage,
        signals_stage,
        stage_specs,
    )
    from experiments.engine.store import ArtifactStore

    entry = _entry(cfg)
    check_export_out(cfg)
    check_metric_configs(list(cfg["metrics"]["compute"]))
    check_format_config(cfg["pool"])
    check_embed_config(cfg["embed"])
    store = ArtifactStore(cfg["cache_dir"])
    specs = stage_specs(cfg, entry)
    convs = pool_stage(store, specs["pool"], cfg["pool"])
    if selection.get_selector(entry["selector"]).distinct and entry["size"] > len(convs):
        raise InputError(f"size={entry['size']} is larger than the pool ({len(convs)} rows): lower size or use a "
                         "larger pool")
    check_signal_needs(specs["signals"], convs)
    emb = embed_stage(store, specs["embed"], convs, cfg["embed"], cfg["cache_dir"], cfg["pool"].get("path"))
    signals = signals_stage(store, specs["signals"], convs, emb, cfg.get("device", "cpu"))
    runner = SubsetRunner(cfg, store, convs, emb, timings={}, signals=signals)
    indices, sub = runner.subset_rows(entry, specs)
    row = runner.metrics_row(entry, specs, indices, sub)
    out = Path(cfg["out"])
    prov = provenance(cfg, store, specs, entry, indices, len(convs))
    export_subset(out, convs, indices, prov, row, overwrite=bool(cfg.get("overwrite")))
    if cfg.get("map"):
        write_map(out / "pool.parquet", convs, emb, {"selected": indices})
    if cfg.get("push_to_hub"):
        push_to_hub(out / "hf", cfg["push_to_hub"], private=bool(cfg.get("hub_private", True)))
    return out


def _replicate_scores(results: Path, rep: dict[str, Any], eval_json: Path) -> dict[str, float]:
    """One fine-tuned model's numeric scores: eval.json's, plus the study-wide combined performance."""
    import pandas as pd

    scores = {}
    if eval_json.exists():
        scores = {k: v for k, v in json.loads(eval_json.read_text()).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
    runs_csv = results / "runs.csv"
    if runs_csv.exists():
        runs = pd.read_csv(runs_csv)
        hit = runs[(runs["subset"] == rep["label"]) & (runs["seed"] == rep["seed"])]
        if "train_seed" in hit and hit["train_seed"].notna().any():
            hit = hit[hit["train_seed"] == rep["train_seed"]]
        if len(hit) and "performance" in hit and pd.notna(hit["performance"].iloc[0]):
            scores["performance"] = float(hit["performance"].iloc[0])
    return scores


def study_scores(results: Path, study: dict[str, Any], store: Any, replicates: list[dict[str, Any]]
                 ) -> dict[str, float]:
    """The scores of the models fine-tuned on one subset: as they are for one model; with training replicates
    (finetune.seeds), each replicate's under ``<score> (train seed <t>)`` plus their mean under ``<score>``."""
    from experiments.engine.pipeline import stage_specs
    from experiments.engine.stages import EvalRow

    per = {rep["train_seed"]: _replicate_scores(results, rep, store.path("eval", stage_specs(study, rep)["eval"])
                                                / EvalRow.FILE) for rep in replicates}
    if len(per) == 1:
        return next(iter(per.values()))
    keys = sorted({k for s in per.values() for k in s})
    means = {k: float(np.mean([s[k] for s in per.values() if k in s])) for k in keys}
    return means | {f"{k} (train seed {t})": v for t, s in per.items() for k, v in s.items()}


def export_study(cfg: dict[str, Any]) -> Path:
    """Export every subset of the finished study at ``cfg['from_study']`` to ``<out>/<label>-s<seed>/``."""
    from divcore.errors import InputError
    from experiments.data.export import check_export_out, check_out_dir, export_subset, write_map
    from experiments.engine.pipeline import (
        STUDY_CONFIG,
        SubsetRunner,
        embed_stage,
        pool_stage,
        replicate_entries,
        signals_stage,
        stage_specs,
        subset_plan,
    )
    from experiments.engine.store import ArtifactStore

    results = Path(cfg["from_study"])
    check_export_out(cfg)
    conf = results / STUDY_CONFIG
    if not conf.exists():
        raise InputError(f"from_study={results}: no {STUDY_CONFIG} there, so it is not the results_dir of a divbench "
                         "study run by this version; run divbench-study (cached stages are reused) and retry")
    if cfg.get("push_to_hub"):
        raise InputError("push_to_hub exports one subset; with from_study, push each exported <out>/<label>-s<seed> "
                         "with divbench-select on that subset, or upload its hf/ folder yourself")
    study = json.loads(conf.read_text())
    store = ArtifactStore(study["cache_dir"])
    plan = subset_plan(study["selection"])
    missing = [f"{e['label']} (seed {e['seed']})" for e in plan
               if not store.is_complete("subset", stage_specs(study, e)["subset"])]
    if missing:
        raise InputError(f"from_study={results}: the study has not selected {', '.join(missing)} yet; finish it with "
                         "divbench-study, then export")
    specs = stage_specs(study)
    convs = pool_stage(store, specs["pool"], study["pool"])
    emb = embed_stage(store, specs["embed"], convs, study["embed"], study["cache_dir"], study["pool"].get("path"))
    signals = signals_stage(store, specs["signals"], convs, emb, study.get("device", "cpu"))
    runner = SubsetRunner(study, store, convs, emb, timings={}, signals=signals)
    out = Path(cfg["out"])
    jobs = []
    for entry in plan:
        specs = stage_specs(study, entry)
        indices, sub = runner.subset_rows(entry, specs)
        prov = provenance(study, store, specs, entry, indices, len(convs)) | {"label": entry["label"]}
        dest = out / f"{entry['label']}-s{entry['seed']}"
        check_out_dir(dest, prov, bool(cfg.get("overwrite")))  # all checked before any is written
        jobs.append((entry, specs, indices, sub, prov, dest))
    for entry, specs, indices, sub, prov, dest in jobs:
        scores = study_scores(results, study, store, replicate_entries([entry], study))
        export_subset(dest, convs, indices, prov, runner.metrics_row(entry, specs, indices, sub), scores=scores,
                      overwrite=bool(cfg.get("overwrite")), name=f"{study['study']}-{dest.name}")
    if cfg.get("map"):
        write_map(out / "pool.parquet", convs, emb, {dest.name: indices for _, _, indices, _, _, dest in jobs})
    return out


def run_select(cfg: dict[str, Any]) -> Path:
    """Shared by the CLI and the tests: export one selection, or every subset of a study."""
    return export_study(cfg) if cfg.get("from_study") else select_one(cfg)


def params_as_additions(argv: list[str]) -> list[str]:
    """``params.<name>=<value>`` -> ``++params.<name>=<value>``: ``params`` starts empty and Hydra would otherwise
    refuse a key it does not hold; the selector's own signature then rejects unknown names (exit 2)."""
    return [f"++{a}" if a.startswith("params.") and "=" in a else a for a in argv]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="select")
def _main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard

    def work() -> None:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=not cfg.get("from_study"))
        log.info("exported to %s", run_select(resolved))

    guard(work)


def main() -> None:
    """``divbench-select``: secrets are refused before Hydra writes anything (mandatory keys depend on the mode,
    so the config is resolved in the run)."""
    from experiments.cli.command import preflight

    sys.argv = sys.argv[:1] + params_as_additions(sys.argv[1:])
    preflight("select", resolve=False)
    _main()


if __name__ == "__main__":
    main()
