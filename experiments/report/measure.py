"""Measure any embedding sets with any metric configs, one row per subset (``divbench-measure``).

The inputs are embedding sets, not a pool of conversations, so no stage of the study's DAG runs: the reference's
pool signals (k-means fits shared by every subset) are computed once here, with the same
:func:`metrics.signals.pool_signals` the signals stage uses, without the kNN signal (a subset's rows are not known
to be reference rows, so NovelSum searches their neighbours itself).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

import metrics
from divcore.errors import InputError
from divcore.io import check_writable
from divcore.ownership import check_output_dir, write_owned
from experiments.data.embedding_sets import load_matrix, load_subsets
from experiments.report.tables import to_markdown
from metrics.registry import check_config, metric_needs
from metrics.signals import pool_signals

log = logging.getLogger(__name__)
MEASURE_FILES = ("measure.csv", "measure.md")  # what an out folder written before manifests holds


def check_measure_config(cfg: dict) -> None:
    """Metric configs, input paths and the output folder, before anything is read or written."""
    for c in cfg["metrics"]["compute"]:
        check_config(c["name"], dict(c.get("params") or {}))
    for key in ("subsets", "reference"):
        if cfg.get(key) and not Path(cfg[key]).exists():
            raise InputError(f"{key}={cfg[key]} does not exist: point it at a .npy / .json file or a folder of them")
    check_output_dir(cfg["out"], legacy=MEASURE_FILES, inputs={k: cfg.get(k) for k in ("subsets", "reference")})
    check_writable(cfg["out"], "out")


def check_reference_size(configs: list[dict], n_rows: int, where: str) -> None:
    """A metric whose k-means fit on the reference needs more rows than the reference has: named with its key, not
    as a need of "the pool" (measure searches neighbours itself, so only the k-means fits are the reference's)."""
    for i, c in enumerate(configs):
        needs = metric_needs([c]).resolved(False)
        fits = sorted(n for n, _ in needs.kmeans | needs.partitions if n > n_rows)
        if fits:
            raise InputError(f"metrics.compute[{i}] ({c['name']}) fits {fits[-1]} k-means clusters on the reference, "
                             f"which has {n_rows} rows (reference={where}): set "
                             f"metrics.compute[{i}].params.n_clusters to at most {n_rows}, drop {c['name']} from "
                             "metrics.compute, or give a larger reference")


def measure(cfg: dict) -> pd.DataFrame:
    """Every metric of ``metrics.compute`` on every subset, against the reference (or itself): ``measure.csv`` and
    ``measure.md`` in ``out``."""
    check_measure_config(cfg)
    configs = list(cfg["metrics"]["compute"])
    reference = load_matrix(cfg["reference"]) if cfg.get("reference") else None
    rows = []
    subsets = load_subsets(cfg["subsets"])  # every file is read and checked before the first metric runs
    signals = None
    if reference is not None:
        check_reference_size(configs, len(reference), cfg["reference"])
    if reference is not None:  # the reference's k-means fits once for every subset; the subsets' rows are not
        # known to be reference rows, so NovelSum searches their neighbours itself (no kNN signal)
        signals = pool_signals(reference, replace(metric_needs(configs), knn_k=0))
    for name, emb in subsets.items():
        ref = emb if reference is None else reference
        row = metrics.compute(configs, metrics.MetricInputs(embeddings=emb, reference=ref, signals=signals))
        rows.append({"subset": name, "n": len(emb)} | row)
        log.info("measured %s (%d rows)", name, len(emb))
    table = pd.DataFrame(rows)
    out = Path(cfg["out"])
    write_owned(out, {"measure.csv": table.to_csv(index=False), "measure.md": to_markdown(table)}, "measure",
                legacy=MEASURE_FILES)
    log.info("wrote %s", out / "measure.csv")
    return table
