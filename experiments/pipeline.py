"""The study pipeline: pool -> embeddings -> subsets -> metrics -> fine-tune -> evaluate -> report.

Each stage reads its inputs from and writes its output to the artifact store (``experiments.cache``), keyed
by the stage's resolved config plus the keys of what it consumed; a finished artifact is never recomputed.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import metrics
import selection
from eval.evaluators import evaluate
from experiments.cache import ArtifactStore, atomic_write
from experiments.embed import embed_texts
from experiments.pools import (
    embedding_text,
    filter_prompt_length,
    load_conversations,
    read_jsonl,
    sample_pool,
    write_jsonl,
)
from experiments.report import metric_columns, write_report
from experiments.tracking import wandb_run
from finetune.models import resolve_model
from metrics.registry import check_config
from metrics.validation import InputError
from selection.signals import length_proxy

log = logging.getLogger(__name__)


@contextmanager
def timed(stage: str, timings: dict[str, dict[str, float]]) -> Iterator[None]:
    """Accumulate wall time per stage and record the process's peak resident memory after it."""
    start = time.perf_counter()
    try:
        yield
    finally:
        entry = timings.setdefault(stage, {"wall_s": 0.0, "peak_rss_gib": 0.0})
        entry["wall_s"] += time.perf_counter() - start
        entry["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def subset_plan(sel_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand the selection config into one entry per (subset, seed), validated before any heavy work."""
    plan = []
    for item in sel_cfg["subsets"]:
        spec = selection.get_selector(item["selector"])
        params = dict(item.get("params") or {})
        selection.registry._check_params(spec, params)
        for seed in item.get("seeds", sel_cfg["seeds"]):
            plan.append({"label": item.get("label", item["selector"]), "selector": item["selector"],
                         "params": params, "seed": int(seed), "size": int(sel_cfg["size"])})
    labels = [(p["label"], p["seed"]) for p in plan]
    if len(set(labels)) != len(labels):
        raise InputError("selection.subsets: two subsets share a label and seed; give each a distinct label")
    return plan


def pool_stage(store: ArtifactStore, cfg: dict[str, Any]) -> tuple[dict, list[dict]]:
    spec = {"pool": cfg}
    path = store.path("pool", spec)
    if not store.is_complete("pool", spec):
        convs = load_conversations(cfg.get("path"), cfg["format"], cfg["on_invalid"])
        convs = sample_pool(filter_prompt_length(convs, cfg.get("max_prompt_chars")), cfg.get("size"),
                            int(cfg["seed"]))
        with store.build("pool", spec) as tmp:
            write_jsonl(tmp / "pool.jsonl", convs)
    return spec, read_jsonl(path / "pool.jsonl")


def embed_stage(store: ArtifactStore, pool_spec: dict, convs: list[dict], cfg: dict[str, Any],
                model_path: str) -> tuple[dict, np.ndarray]:
    spec = {"pool": pool_spec, "embed": {k: v for k, v in cfg.items() if k not in ("batch_size", "device")}}
    path = store.path("embed", spec)
    if not store.is_complete("embed", spec):
        vecs = embed_texts([embedding_text(c) for c in convs], model_path, cfg["backend"],
                           max_length=int(cfg["max_length"]), batch_size=int(cfg["batch_size"]),
                           device=cfg["device"])
        with store.build("embed", spec) as tmp:
            np.save(tmp / "embeddings.npy", vecs)
    return spec, np.load(path / "embeddings.npy")


def data_column(convs: list[dict], key: str) -> Any:
    """A per-row column the pool carries for every conversation (quality scores, tags), else None."""
    if not all(key in c for c in convs):
        return None
    values = [c[key] for c in convs]
    return np.asarray(values, dtype=np.float64) if key == "quality" else values


def subset_stage(store: ArtifactStore, embed_spec: dict, emb: np.ndarray, convs: list[dict],
                 entry: dict[str, Any]) -> tuple[dict, list]:
    spec = {"embed": embed_spec, "subset": {k: entry[k] for k in ("selector", "params", "seed", "size")}}
    path = store.path("subset", spec)
    if not store.is_complete("subset", spec):
        pool = selection.PoolInputs(size=emb.shape[0], embeddings=emb, quality=data_column(convs, "quality"),
                                    tags=data_column(convs, "tags"), proxy_quality=length_proxy(convs),
                                    fingerprint=store.path("embed", embed_spec).name)
        result = selection.select(entry["selector"], pool, entry["size"], entry["seed"], **entry["params"])
        with store.build("subset", spec) as tmp:
            (tmp / "indices.json").write_text(json.dumps(result.indices))
            (tmp / "provenance.json").write_text(json.dumps(result.provenance, indent=2))
    return spec, json.loads((path / "indices.json").read_text())


def metrics_stage(store: ArtifactStore, subset_spec: dict, indices: list[int], emb: np.ndarray,
                  convs: list[dict], metric_cfgs: list[dict]) -> dict[str, float]:
    spec = {"subset": subset_spec, "metrics": metric_cfgs}
    path = store.path("metrics", spec)
    if not store.is_complete("metrics", spec):
        sub = [convs[i] for i in indices]
        quality, tags = data_column(sub, "quality"), data_column(sub, "tags")
        inputs = metrics.MetricInputs(embeddings=emb[indices], reference=emb, texts=[embedding_text(c) for c in sub],
                                      quality=quality, tags=tags)
        row = metrics.compute(metric_cfgs, inputs)
        with store.build("metrics", spec) as tmp:
            (tmp / "metrics.json").write_text(json.dumps(row, indent=2))
    return json.loads((path / "metrics.json").read_text())


def finetune_stage(store: ArtifactStore, subset_spec: dict, indices: list[int], convs: list[dict],
                   cfg: dict[str, Any], model_path: str) -> tuple[dict, Path]:
    from finetune.sft import train_sft  # heavy import (TRL), only when training is due

    spec = {"subset": subset_spec, "finetune": cfg}
    path = store.path("finetune", spec)
    if not store.is_complete("finetune", spec):
        with store.build("finetune", spec) as tmp:
            stats = train_sft([convs[i] for i in indices], model_path, tmp / "model", cfg)
            (tmp / "train.json").write_text(json.dumps(stats, indent=2))
    return spec, path / "model"


def eval_stage(store: ArtifactStore, ft_spec: dict, adapter: Path, cfg: dict[str, Any],
               model_path: str) -> dict[str, Any]:
    spec = {"finetune": ft_spec, "eval": cfg}
    path = store.path("eval", spec)
    if not store.is_complete("eval", spec):
        result = evaluate(cfg["name"], model_path, str(adapter) if cfg.get("adapter", True) else None, cfg)
        with store.build("eval", spec) as tmp:
            (tmp / "eval.json").write_text(json.dumps(result, indent=2))
    return json.loads((path / "eval.json").read_text())


def _check_metric_configs(metric_cfgs: list[dict]) -> None:
    for m in metric_cfgs:
        check_config(m["name"], dict(m.get("params") or {}))


def run_study(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the whole study described by a resolved config dict; returns paths and timings."""
    metric_cfgs = list(cfg["metrics"]["compute"])
    _check_metric_configs(metric_cfgs)
    plan = subset_plan(cfg["selection"])
    store = ArtifactStore(cfg["cache_dir"])
    timings: dict[str, dict[str, float]] = {}
    with timed("pool", timings):
        pool_spec, convs = pool_stage(store, cfg["pool"])
    with timed("embed", timings):
        embed_model = resolve_model(cfg["embed"]["model"], cfg["cache_dir"])
        embed_spec, emb = embed_stage(store, pool_spec, convs, cfg["embed"], embed_model)
    base_model = resolve_model(cfg["finetune"]["base_model"], cfg["cache_dir"])
    ft_cfg = cfg["finetune"]
    rows = []
    for entry in plan:
        with timed("select", timings):
            subset_spec, indices = subset_stage(store, embed_spec, emb, convs, entry)
        with timed("metrics", timings):
            row = metrics_stage(store, subset_spec, indices, emb, convs, metric_cfgs)
        with timed("finetune", timings):
            ft_spec, adapter = finetune_stage(store, subset_spec, indices, convs, ft_cfg, base_model)
        with timed("eval", timings):
            result = eval_stage(store, ft_spec, adapter, cfg["eval"], base_model)
        record = {"subset": entry["label"], "selector": entry["selector"], "seed": entry["seed"],
                  "size": entry["size"], "unique_rows": len(set(indices)),
                  "base_model": cfg["finetune"]["base_model"]} | row | result
        rows.append(record)
        with wandb_run(cfg["logger"], name=f"{entry['label']}-s{entry['seed']}", job_type="subset",
                       config={"study": cfg["study"], **entry, "finetune": cfg["finetune"], "eval": cfg["eval"]},
                       tags=[entry["selector"]]) as run:
            if run is not None:
                run.log(record)
        log.info("subset %s seed %d: performance %.4f", entry["label"], entry["seed"], result["performance"])
    runs = pd.DataFrame(rows)
    with timed("report", timings):
        paths = write_report(runs, metric_columns(runs), cfg["results_dir"], **cfg.get("report", {}))
        atomic_write(Path(cfg["results_dir"]) / "timings.json", json.dumps(timings, indent=2))
    _log_study(cfg, runs, paths)
    return {"paths": paths, "timings": timings, "runs": runs}


def _log_study(cfg: dict[str, Any], runs: pd.DataFrame, paths: dict[str, Path]) -> None:
    with wandb_run(cfg["logger"], name=f"study-{cfg['study']}", job_type="study",
                   config={"study": cfg["study"]}) as run:
        if run is None:
            return
        import wandb

        table = pd.read_csv(paths["table_csv"]).fillna("")
        run.log({"correlation": wandb.Table(dataframe=table), "runs": wandb.Table(dataframe=runs)})
        run.log({f"scatter/{key.split(':', 1)[1]}": wandb.Image(str(p)) for key, p in paths.items()
                 if key.startswith("scatter:")})
