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
from divcore.registry import signature_defaults
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


SMALL_REFERENCE_ROWS_PER_CLUSTER = 4  # a default n_clusters too large for the data is scaled to rows // 4


def cluster_counts(c: dict) -> tuple[int | None, bool]:
    """(n_clusters the metric config fits, whether its params set it); (None, False) for a metric without one."""
    params = dict(c.get("params") or {})
    metric = check_config(c["name"], params)
    if "n_clusters" not in metric.params:
        return None, False
    if "n_clusters" in params:
        return int(params["n_clusters"]), True
    return int(signature_defaults(metric.fn, 1)["n_clusters"]), False


def rows_of(n: int, where: dict[str, str | None], key: str) -> str:
    return f"{n} rows ({key}={where.get(key)})"


def fit_cluster_counts(configs: list[dict], reference_rows: int | None, subset_rows: int,
                       where: dict[str, str | None]) -> list[dict]:
    """The metric configs with every k-means fit within the rows it is fitted on: the reference's k-means fits
    (MIG labels, partition_entropy) on ``reference_rows``, the others, and every fit without a reference, on the
    smallest subset (``subset_rows``). A **default** ``n_clusters`` above that is scaled to rows // 4 (at least 2)
    with a warning naming the metric and its key; a value the config **sets** is an error naming the same key (a
    choice is never changed silently)."""
    fitted = []
    for i, c in enumerate(configs):
        n, explicit = cluster_counts(c)
        needs = metric_needs([c]).resolved(False)
        if reference_rows is not None and (needs.kmeans or needs.partitions):
            rows, data = reference_rows, f"the reference, which has {rows_of(reference_rows, where, 'reference')}"
        else:
            rows, data = subset_rows, f"the smallest subset, which has {rows_of(subset_rows, where, 'subsets')}"
        if n is None or n <= rows:
            fitted.append(c)
            continue
        key = f"metrics.compute.{i}.params.n_clusters"
        if explicit:
            raise InputError(f"metrics.compute[{i}] ({c['name']}) fits {n} k-means clusters on {data}: set {key} to "
                             f"at most {rows}, drop {c['name']} from metrics.compute, or give a larger reference")
        scaled = max(2, rows // SMALL_REFERENCE_ROWS_PER_CLUSTER)
        if scaled > rows:
            raise InputError(f"metrics.compute[{i}] ({c['name']}) needs at least 2 rows to cluster; {data}: drop "
                             f"{c['name']} from metrics.compute")
        log.warning("metrics.compute[%d] (%s): its default %d k-means clusters exceed %s; fitting %d instead "
                    "(set +%s=<n> to choose)", i, c["name"], n, data, scaled, key)
        fitted.append(dict(c) | {"params": dict(c.get("params") or {}) | {"n_clusters": scaled}})
    return fitted


def measure(cfg: dict) -> pd.DataFrame:
    """Every metric of ``metrics.compute`` on every subset, against the reference (or itself): ``measure.csv`` and
    ``measure.md`` in ``out``."""
    check_measure_config(cfg)
    configs = list(cfg["metrics"]["compute"])
    reference = load_matrix(cfg["reference"]) if cfg.get("reference") else None
    rows = []
    subsets = load_subsets(cfg["subsets"])  # every file is read and checked before the first metric runs
    signals = None
    configs = fit_cluster_counts(configs, None if reference is None else len(reference),
                                 min(len(e) for e in subsets.values()),
                                 {k: cfg.get(k) for k in ("reference", "subsets")})
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
