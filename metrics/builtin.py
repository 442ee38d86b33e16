"""Registry entries for the diversity metrics (thin adapters from MetricInputs to the plain functions).

An entry that reads pool-wide work declares it (``signals=``): given ``inputs.signals`` and ``inputs.rows`` (the
study's case) it takes that work from the pool signals (:mod:`metrics.signals`); without them it computes it, as the
plain functions do on arrays (divbench-measure, the unit tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from divcore.errors import InputError
from divcore.params import COSINE, NON_NEGATIVE, POSITIVE_INT, SEED, integer, number, one_of, sequence_of
from metrics import baselines, mig
from metrics import labels as labels_mod
from metrics.labels import LABEL_SOURCE, PoolLabels
from metrics.novelsum import distsum_cosine, novelsum, novelsum_grid
from metrics.registry import MetricInputs, register
from metrics.signals import SignalNeeds, mig_label_needs

MODE = one_of("reference", "paper")


def _pool_knn(inputs: MetricInputs, neighbors: int) -> np.ndarray | None:
    """The subset rows' reference-mode kNN distances from the pool signals, or None (then NovelSum searches)."""
    if inputs.signals is None or inputs.rows is None:
        return None
    return inputs.signals.knn(inputs.rows, neighbors)


@register("novelsum", needs=("embeddings", "reference"), family="NovelSum",
          params={"neighbors": POSITIVE_INT, "density_power": NON_NEGATIVE, "distance_power": NON_NEGATIVE,
                  "mode": MODE, "block_size": POSITIVE_INT},
          signals=lambda p: SignalNeeds(knn_k=p["neighbors"]))
def _novelsum(inputs: MetricInputs, neighbors: int = 10, density_power: float = 0.5, distance_power: float = 1.0,
              mode: str = "reference", block_size: int = 1024, device: str = "cpu") -> float:
    return novelsum(inputs.embeddings, inputs.reference, neighbors=neighbors, density_power=density_power,
                    distance_power=distance_power, mode=mode, block_size=block_size, device=device,
                    knn_sq=_pool_knn(inputs, neighbors))


@register("novelsum_grid", needs=("embeddings", "reference"), family="NovelSum",
          params={"neighbors": sequence_of(POSITIVE_INT), "density_powers": sequence_of(NON_NEGATIVE),
                  "distance_powers": sequence_of(NON_NEGATIVE), "mode": MODE, "block_size": POSITIVE_INT},
          signals=lambda p: SignalNeeds(knn_k=max(p["neighbors"], default=0)))
def _novelsum_grid(inputs: MetricInputs, neighbors: Sequence[int] = (5, 10),
                   density_powers: Sequence[float] = (0.0, 0.25, 0.5),
                   distance_powers: Sequence[float] = (0.0, 1.0, 2.0), mode: str = "reference",
                   block_size: int = 1024, device: str = "cpu") -> dict[str, float]:
    return novelsum_grid(inputs.embeddings, inputs.reference, neighbors=neighbors, density_powers=density_powers,
                         distance_powers=distance_powers, mode=mode, block_size=block_size, device=device,
                         knn_sq=_pool_knn(inputs, max(neighbors, default=1)))


@register("distsum_cosine", needs=("embeddings",), family="distance")
def _distsum_cosine(inputs: MetricInputs) -> float:
    return distsum_cosine(inputs.embeddings)


@register("ttr", needs=("texts",), family="lexical")
def _ttr(inputs: MetricInputs) -> float:
    return baselines.ttr(inputs.texts)


@register("vocd_d", needs=("texts",), family="lexical",  # vocd samples k = 35..ntokens tokens
          params={"ntokens": integer(lo=35), "within_sample": POSITIVE_INT, "iterations": POSITIVE_INT, "seed": SEED})
def _vocd_d(inputs: MetricInputs, ntokens: int = 50, within_sample: int = 100, iterations: int = 3,
            seed: int = 42) -> float:
    return baselines.vocd_d(inputs.texts, ntokens, within_sample, iterations, seed)


@register("distsum_l2", needs=("embeddings",), family="distance", params={"block_size": POSITIVE_INT})
def _distsum_l2(inputs: MetricInputs, block_size: int = 2048) -> float:
    return baselines.distsum_l2(inputs.embeddings, block_size)


@register("knn_distance", needs=("embeddings",), family="distance", params={"k": POSITIVE_INT})
def _knn_distance(inputs: MetricInputs, k: int = 10) -> float:
    return baselines.knn_distance(inputs.embeddings, k)


@register("vendi", needs=("embeddings",), family="distance")
def _vendi(inputs: MetricInputs) -> float:
    return baselines.vendi(inputs.embeddings)


@register("facility_location", needs=("embeddings", "reference"), family="distance",
          params={"block_size": POSITIVE_INT})
def _facility_location(inputs: MetricInputs, block_size: int = 4096) -> float:
    return baselines.facility_location(inputs.embeddings, inputs.reference, block_size)


@register("cluster_inertia", needs=("embeddings",), family="distribution",
          params={"n_clusters": POSITIVE_INT, "seed": SEED, "n_init": POSITIVE_INT})
def _cluster_inertia(inputs: MetricInputs, n_clusters: int = 10, seed: int = 0, n_init: int = 3) -> float:
    return baselines.cluster_inertia(inputs.embeddings, n_clusters, seed, n_init)


@register("radius", needs=("embeddings",), family="distribution")
def _radius(inputs: MetricInputs) -> float:
    return baselines.radius(inputs.embeddings)


@register("log_determinant", needs=("embeddings",), family="distribution", params={"ridge": NON_NEGATIVE})
def _log_determinant(inputs: MetricInputs, ridge: float = 1e-3) -> float:
    return baselines.log_determinant(inputs.embeddings, ridge)


@register("partition_entropy", needs=("embeddings", "reference"), family="distribution",
          params={"n_clusters": POSITIVE_INT, "seed": SEED},
          signals=lambda p: SignalNeeds(partitions=frozenset({(p["n_clusters"], p["seed"])})))
def _partition_entropy(inputs: MetricInputs, n_clusters: int = 100, seed: int = 42) -> float:
    if inputs.signals is None:
        return baselines.partition_entropy(inputs.embeddings, inputs.reference, n_clusters, seed)
    fit = inputs.signals.clustering("partitions", n_clusters, seed)
    ids = fit.ids[inputs.rows] if inputs.rows is not None else fit.assign(inputs.embeddings)
    return baselines.label_entropy(ids, n_clusters)


@register("mig_information", needs=("embeddings", "reference"), family="MIG",
          params={"threshold": COSINE, "prop_weight": NON_NEGATIVE, "phi_a": NON_NEGATIVE,
                  "phi_b": number(lo=0, lo_open=True), "label_source": LABEL_SOURCE, "n_clusters": POSITIVE_INT,
                  "seed": SEED},
          signals=lambda p: mig_label_needs(p["label_source"], p["n_clusters"], p["seed"], p["label_embedder"]))
def _mig_information(inputs: MetricInputs, threshold: float = 0.9, prop_weight: float = 1.0, phi_a: float = mig.PHI_A,
                     phi_b: float = mig.PHI_B, norm: bool = False, label_source: str = "auto", n_clusters: int = 256,
                     seed: int = 0, label_embedder: str = "packaged:minilm") -> dict[str, float]:
    """E(D) on the pool-wide label graph, built as the ``mig`` selector builds it (same parameters, same graph):
    the pool's tags (``reference_tags``) when present, else k-means clusters fitted on the reference pool; from the
    pool signals when given, where the selector reads the same labels. Quality: the subset's scores when present,
    else 1. Also reports the graph's edge count and mean degree."""
    labels, pool = _mig_labels(inputs, label_source, n_clusters, seed, label_embedder)
    model = mig.InformationModel.build(pool.vectors, threshold, prop_weight, where="mig_information")
    u = mig.sample_information(labels, inputs.quality, model.prop, norm)
    value = mig.information(np.asarray(u.sum(axis=0, dtype=np.float64)).ravel(), phi_a, phi_b)
    return {"mig_information": value, "label_edges": model.stats["edges"],
            "label_mean_degree": model.stats["mean_degree"]}


def _mig_labels(inputs: MetricInputs, label_source: str, n_clusters: int, seed: int,
                embedder: str) -> tuple[list[list[int]], PoolLabels]:
    """(the subset rows' label ids, the pool's labels)."""
    if inputs.signals is not None:
        pool = inputs.signals.mig_labels(label_source, n_clusters, seed, embedder)
        if inputs.rows is not None:
            return [pool.labels[i] for i in inputs.rows], pool
        if pool.source == "kmeans":  # rows from outside the pool (divbench-measure): their nearest centroids
            ids = inputs.signals.clustering("kmeans", n_clusters, seed).assign(inputs.embeddings)
            return [[int(i)] for i in ids], pool
        if inputs.tags is None:
            raise InputError("mig_information: tag labels need the subset's tags")
        return pool.ids_of(inputs.tags), pool
    use_tags = label_source == "tags" or (label_source == "auto" and inputs.tags is not None)
    if use_tags:
        if inputs.tags is None or inputs.reference_tags is None:
            raise InputError("mig_information: label_source=tags needs the subset's tags and the pool's "
                             "(reference_tags) to build the pool-wide label graph; use label_source=kmeans")
        pool = labels_mod.tag_labels(inputs.reference_tags, embedder)
        return pool.ids_of(inputs.tags), pool
    return labels_mod.kmeans_assign(inputs.embeddings, inputs.reference, n_clusters, seed)
