"""Subsets out of the artifact store: one selection of a pool (``divbench-select``), or every subset of a finished
study (``divbench-select from_study=<results_dir>``), exported as files and a Hugging Face dataset
(:mod:`experiments.data.export`).

Both run the engine (:func:`experiments.engine.pipeline.run`) up to the metrics stage on the study's own cache, so a
selection a study already made (same pool, embeddings, selector, parameters, seed and size) is read back, not
recomputed, and checked as the study checks it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import selection
from divcore.errors import InputError
from experiments.data.export import (
    check_export_out,
    check_hub_token,
    check_out_dir,
    export_subset,
    push_to_hub,
    write_map,
)
from experiments.data.pools import check_format_config
from experiments.embedding.backends import check_embed_config
from experiments.engine.dag import replicate_entries, stage_specs, subset_plan
from experiments.engine.pipeline import STUDY_CONFIG, check_metric_configs, run
from experiments.engine.stages import Embeddings, EvalRow, PoolRows
from experiments.engine.store import ArtifactStore
from metrics.validation import check_positive_int
from selection.registry import check_params, effective_params

log = logging.getLogger(__name__)


def _content_id(store: ArtifactStore, path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256, through the store's remembered hashes."""
    return store.hashes.fingerprint(path)[:16]


def provenance(cfg: dict[str, Any], store: ArtifactStore, specs: dict, entry: dict[str, Any], indices: list[int],
               n_pool: int) -> dict[str, Any]:
    """Who picked these rows, how, from what: selector, parameters (defaults filled in), seed, and content
    fingerprints of the pool rows and their embeddings (stable outside this machine's cache)."""
    embed = {k: v for k, v in cfg["embed"].items() if k not in ("batch_size", "device")}
    return {"selector": entry["selector"], "params": effective_params(selection.get_selector(entry["selector"]),
                                                                       entry["params"]),
            "seed": entry["seed"], "size": entry["size"], "pool_size": n_pool, "unique_rows": len(set(indices)),
            "pool_fingerprint": _content_id(store, store.path("pool", specs["pool"]) / PoolRows.FILE),
            "embedding_fingerprint": _content_id(store, store.path("embed", specs["embed"]) / Embeddings.FILE),
            "pool": cfg["pool"], "embed": embed, "study": cfg.get("study"),
            "cache_keys": {s: store.path(s, specs[s]).name for s in ("pool", "embed", "subset")}}


def subset_entry(cfg: dict[str, Any]) -> dict[str, Any]:
    """The one subset divbench-select is asked for, validated (selector, parameters, size) before any work."""
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
    entry = subset_entry(cfg)
    check_export_out(cfg)
    if cfg.get("push_to_hub"):
        check_hub_token(cfg["push_to_hub"])
    check_metric_configs(list(cfg["metrics"]["compute"]))
    check_format_config(cfg["pool"])
    check_embed_config(cfg["embed"])
    done = run(cfg, until="metrics", entries=[entry]).outputs[0]
    convs, indices = done["pool"], done["subset"]
    store = ArtifactStore(cfg["cache_dir"])
    prov = provenance(cfg, store, stage_specs(cfg, entry), entry, indices, len(convs))
    out = Path(cfg["out"])
    export_subset(out, convs, indices, prov, done["metrics"], overwrite=bool(cfg.get("overwrite")))
    if cfg.get("map"):
        write_map(out / "pool.parquet", convs, done["embed"], {"selected": indices})
    if cfg.get("push_to_hub"):
        push_to_hub(out / "hf", cfg["push_to_hub"], private=bool(cfg.get("hub_private", True)))
    return out


def _replicate_scores(results: Path, rep: dict[str, Any], eval_json: Path) -> dict[str, float]:
    """One fine-tuned model's numeric scores: eval.json's, plus the study-wide combined performance."""
    scores = {}
    if eval_json.exists():
        row = json.loads(eval_json.read_text())
        scores = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if row.get("judge_smoke_test"):  # the dataset card marks the judged scores as a smoke test
            scores["judge_smoke_test"] = 1.0
    runs_csv = results / "runs.csv"
    if runs_csv.exists():
        runs = pd.read_csv(runs_csv)
        hit = runs[(runs["subset"] == rep["label"]) & (runs["seed"] == rep["seed"])]
        if "train_seed" in hit and hit["train_seed"].notna().any():
            hit = hit[hit["train_seed"] == rep["train_seed"]]
        if len(hit) and "performance" in hit and pd.notna(hit["performance"].iloc[0]):
            scores["performance"] = float(hit["performance"].iloc[0])
    return scores


def study_scores(results: Path, study: dict[str, Any], store: ArtifactStore, replicates: list[dict[str, Any]]
                 ) -> dict[str, float]:
    """The scores of the models fine-tuned on one subset: as they are for one model; with training replicates
    (finetune.seeds), each replicate's under ``<score> (train seed <t>)`` plus their mean under ``<score>``."""
    per = {rep["train_seed"]: _replicate_scores(results, rep, store.path("eval", stage_specs(study, rep)["eval"])
                                                / EvalRow.FILE) for rep in replicates}
    if len(per) == 1:
        return next(iter(per.values()))
    keys = sorted({k for s in per.values() for k in s})
    means = {k: float(np.mean([s[k] for s in per.values() if k in s])) for k in keys}
    return means | {f"{k} (train seed {t})": v for t, s in per.items() for k, v in s.items()}


def finished_study(cfg: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The results folder ``from_study`` names and the study's resolved config saved beside its results."""
    results = Path(cfg["from_study"])
    check_export_out(cfg)
    conf = results / STUDY_CONFIG
    if not conf.exists():
        raise InputError(f"from_study={results}: no {STUDY_CONFIG} there, so it is not the results_dir of a divbench "
                         "study run by this version; run divbench-study (cached stages are reused) and retry")
    if cfg.get("push_to_hub"):
        raise InputError("push_to_hub exports one subset; with from_study, push each exported <out>/<label>-s<seed> "
                         "with divbench-select on that subset, or upload its hf/ folder yourself")
    return results, json.loads(conf.read_text())


def export_study(cfg: dict[str, Any]) -> Path:
    """Export every subset of the finished study at ``cfg['from_study']`` to ``<out>/<label>-s<seed>/``."""
    results, study = finished_study(cfg)
    # This machine's cache (cache_dir=), not the one the study ran with: study_config.json of a committed or copied
    # study names another machine's folder.
    ran_with = study.get("cache_dir")
    study = study | {"cache_dir": cfg.get("cache_dir") or ran_with}
    store = ArtifactStore(study["cache_dir"])
    plan = subset_plan(study["selection"])
    missing = [f"{e['label']} (seed {e['seed']})" for e in plan
               if not store.is_complete("subset", stage_specs(study, e)["subset"])]
    if missing:
        elsewhere = (f"; the study ran with cache_dir={ran_with}: pass cache_dir={ran_with} if that folder is here"
                     if ran_with and ran_with != study["cache_dir"] else "")
        raise InputError(f"from_study={results}: searched the cache {study['cache_dir']} (cache_dir) and found no "
                         f"selected subset for {', '.join(missing)}{elsewhere}; or run divbench-study with that "
                         f"study's settings and cache_dir={study['cache_dir']} (cached stages are reused), then "
                         "export")
    done = run(study, until="metrics", entries=plan)
    convs = done.shared["pool"]
    out = Path(cfg["out"])
    jobs = []
    for entry, outputs in zip(plan, done.outputs, strict=True):
        indices = outputs["subset"]
        prov = provenance(study, store, stage_specs(study, entry), entry, indices, len(convs))
        prov |= {"label": entry["label"]}
        dest = out / f"{entry['label']}-s{entry['seed']}"
        check_out_dir(dest, prov, bool(cfg.get("overwrite")))  # all checked before any is written
        jobs.append((entry, outputs, prov, dest))
    for entry, outputs, prov, dest in jobs:
        scores = study_scores(results, study, store, replicate_entries([entry], study))
        export_subset(dest, convs, outputs["subset"], prov, outputs["metrics"], scores=scores,
                      overwrite=bool(cfg.get("overwrite")), name=f"{study['study']}-{dest.name}")
    if cfg.get("map"):
        write_map(out / "pool.parquet", convs, done.shared["embed"],
                  {dest.name: outputs["subset"] for _, outputs, _, dest in jobs})
    return out


def run_select(cfg: dict[str, Any]) -> Path:
    """Export one selection, or every subset of a study (``from_study``)."""
    return export_study(cfg) if cfg.get("from_study") else select_one(cfg)
