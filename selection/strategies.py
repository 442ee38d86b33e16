"""The remaining subset builders of the study: k-means, farthest, QDIT, Repr Filter and MIG (registry wrappers;
QDIT's and MIG's greedy live in :mod:`selection.submodular`)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from divcore.errors import InputError
from divcore.params import COSINE, NON_NEGATIVE, POSITIVE_INT, SEED, UNIT_INTERVAL, number, one_of, optional
from metrics.knn import unit_rows
from metrics.labels import LABEL_SOURCE, PoolLabels, kmeans_labels, spherical_kmeans, tag_labels
from metrics.mig import PHI_A, PHI_B, InformationModel
from metrics.signals import SignalNeeds, mig_label_needs
from selection.registry import PoolInputs, Selection, register
from selection.signals import resolve_quality
from selection.submodular import mig, qdit

QUALITY_SOURCE = one_of("data", "proxy", "auto")

log = logging.getLogger(__name__)


def pool_clusters(pool: PoolInputs, n_clusters: int, seed: int) -> np.ndarray:
    """Each pool row's spherical k-means cluster (the pool signals' fit when given, else fitted here)."""
    fit = (pool.signals.clustering("kmeans", n_clusters, seed) if pool.signals is not None
           else spherical_kmeans(pool.embeddings, n_clusters, seed))
    return np.asarray(fit.ids, dtype=np.int64)


@register("kmeans", needs=("embeddings",), params={"n_clusters": POSITIVE_INT},
          signals=lambda p, seed: SignalNeeds(kmeans=frozenset({(p["n_clusters"], seed)})))
def kmeans_subset(pool: PoolInputs, n: int, seed: int, n_clusters: int = 10) -> Selection:
    """k-means (faiss, cosine; the subset seed seeds it) on the pool, then an equal share drawn uniformly from every
    cluster; the share a small cluster cannot fill goes to the others, largest remaining first."""
    ids = pool_clusters(pool, n_clusters, seed)
    members = [np.flatnonzero(ids == c) for c in range(n_clusters)]
    quota = np.zeros(n_clusters, dtype=int)
    remaining = n
    while remaining:
        open_ = [c for c in range(n_clusters) if quota[c] < len(members[c])]
        share = max(1, remaining // len(open_))
        for c in sorted(open_, key=lambda c: -(len(members[c]) - quota[c])):
            take = min(share, len(members[c]) - quota[c], remaining)
            quota[c] += take
            remaining -= take
            if not remaining:
                break
    rng = np.random.default_rng(seed)
    picks = [rng.choice(members[c], size=quota[c], replace=False) for c in range(n_clusters) if quota[c]]
    return Selection(np.concatenate(picks).tolist(), strata=ids)


@register("cluster_random", needs=("embeddings",),
          params={"c": POSITIVE_INT, "n_clusters": POSITIVE_INT, "kmeans_seed": SEED},
          signals=lambda p, seed: SignalNeeds(kmeans=frozenset({(p["n_clusters"], p["kmeans_seed"])})))
def cluster_random_subset(pool: PoolInputs, n: int, seed: int, c: int = 1, n_clusters: int = 32,
                          kmeans_seed: int = 0) -> Selection:
    """Cluster-restricted random: ``c`` of the pool's ``n_clusters`` spherical k-means clusters (among those that
    can give their share), then an equal share of the n rows drawn uniformly without replacement from each (shares
    differ by at most one). Graded semantic diversity without duplicates: c = 1 is one topic, c = n_clusters
    approaches random. One k-means fit (``kmeans_seed``) serves every seed. The clusters are consecutive blocks of
    one random order of the clusters drawn per (kmeans_seed, c): seed s takes block s (wrapping around), so the
    seeds of one c use disjoint clusters as long as s * c stays below the clusters available (two seeds in one
    small cluster would share most rows); the seed draws the rows."""
    if c > n_clusters:
        raise InputError(f"cluster_random: c={c} clusters of n_clusters={n_clusters}: c must be <= n_clusters")
    if c > n:
        raise InputError(f"cluster_random: c={c} clusters cannot each give a row of n={n}: lower c")
    ids = pool_clusters(pool, n_clusters, kmeans_seed)
    sizes = np.bincount(ids, minlength=n_clusters)
    shares = np.full(c, n // c) + (np.arange(c) < n % c)  # the larger shares first
    open_ = np.flatnonzero(sizes >= shares[0])
    if len(open_) < c:
        raise InputError(f"cluster_random: only {len(open_)} of {n_clusters} clusters hold {shares[0]} rows "
                         f"(n={n} over c={c}); lower n or n_clusters, or raise c")
    order = np.random.default_rng([kmeans_seed, c]).permutation(open_)
    chosen = order[(seed * c + np.arange(c)) % len(order)]
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(ids == k), size=share, replace=False) for k, share in zip(chosen, shares,
                                                                                               strict=True)]
    strata = np.where(np.isin(ids, chosen), ids, -1)  # swaps stay inside the chosen cluster of the swapped row
    return Selection(np.concatenate(picks).tolist(), {"clusters": sorted(int(k) for k in chosen)}, strata)


FARTHEST_BLOCK = 16384


@register("farthest", needs=("embeddings",))
def farthest_subset(pool: PoolInputs, n: int, seed: int) -> list[int]:
    """The n rows with the largest cosine distance to the pool's mean direction: an outlier-heavy arm.
    (Our reading of the paper's "Farthest"; deterministic, so the seed is unused.)"""
    blocks = range(0, pool.size, FARTHEST_BLOCK)  # float64 a block at a time: no float64 copy of a 396k pool
    unit = lambda s: unit_rows(pool.embeddings[s:s + FARTHEST_BLOCK], "cpu", torch.float64)
    centre = torch.nn.functional.normalize(sum(unit(s).sum(dim=0) for s in blocks) / pool.size, dim=0)
    dist = np.concatenate([(1.0 - unit(s) @ centre).numpy() for s in blocks])
    return np.argsort(-dist, kind="stable")[:n].tolist()


@register("qdit", needs=("embeddings",),
          params={"alpha": UNIT_INTERVAL, "quality_source": QUALITY_SOURCE, "quality_scale": one_of("minmax", "none"),
                  "reference_size": optional(POSITIVE_INT)})
def qdit_subset(pool: PoolInputs, n: int, seed: int, alpha: float = 0.9, quality_source: str = "auto",
                quality_scale: str = "minmax", reference_size: int | None = None, device: str = "cpu") -> list[int]:
    """QDIT (selection.submodular.qdit): alpha weights quality. The facility location covers the whole pool, or
    a seeded sample of ``reference_size`` rows of it (a documented shortcut for large pools on a CPU)."""
    quality, _ = resolve_quality(quality_source, pool.quality, pool.proxy_quality)
    reference = None
    if reference_size is not None and reference_size < pool.size:
        rows = np.sort(np.random.default_rng(seed).choice(pool.size, reference_size, replace=False))
        reference = pool.embeddings[rows]
    return qdit(pool.embeddings, quality, n, alpha=alpha, reference=reference, quality_scale=quality_scale,
                device=device)


def deita_order(score: np.ndarray) -> np.ndarray:
    """Rows by descending score with DEITA's tie order: ``DataFrame.sort_values(ascending=False)``, i.e. pandas'
    ``nargsort`` (reverse, numpy quicksort ascending, reverse), reproduced here without a DataFrame."""
    score = np.asarray(score, dtype=np.float64)
    reverse = np.arange(len(score))[::-1]
    return reverse[score[::-1].argsort(kind="quicksort")][::-1]


@register("repr_filter", needs=("embeddings",), params={"threshold": COSINE, "quality_source": QUALITY_SOURCE})
def repr_filter_subset(pool: PoolInputs, n: int, seed: int, threshold: float = 0.9,
                       quality_source: str = "auto") -> list[int]:
    """DEITA's Repr Filter (Liu et al. 2024; hkust-nlp/deita ``IterativeFilter.filter``, batch size 1): rows by
    descending quality (ties in DEITA's pandas order, :func:`deita_order`), a row kept when its max cosine
    similarity to the rows already kept is <= threshold, until n are kept. Where too few rows pass, DEITA returns
    a short subset; divbench raises instead, because a study compares subsets of one size."""
    quality, _ = resolve_quality(quality_source, pool.quality, pool.proxy_quality)
    unit = unit_rows(pool.embeddings, "cpu")
    kept = torch.empty((n, unit.shape[1]), dtype=unit.dtype)
    picks: list[int] = []
    for c in deita_order(quality):
        if picks and float((kept[:len(picks)] @ unit[c]).max()) > threshold:
            continue
        kept[len(picks)] = unit[c]
        picks.append(int(c))
        if len(picks) == n:
            return picks
    raise InputError(f"repr_filter: only {len(picks)} rows pass the similarity threshold {threshold}; "
                     f"n={n} needs a higher threshold or a larger pool")


def mig_pool_labels(pool: PoolInputs, label_source: str = "auto", n_clusters: int = 256, label_seed: int = 0,
                    label_embedder: str = "packaged:minilm") -> PoolLabels:
    """The pool-wide MIG labels: the pool's tags (``auto`` when it has them) or k-means clusters of its rows.
    The ``mig_information`` metric builds the same graph from the same parameters; in the study both read these
    labels from the pool signals."""
    if label_source not in ("tags", "kmeans", "auto"):
        raise InputError(f"mig: label_source must be 'tags', 'kmeans' or 'auto', got {label_source!r}")
    if pool.signals is not None:
        return pool.signals.mig_labels(label_source, n_clusters, label_seed, label_embedder)
    if label_source == "tags" or (label_source == "auto" and pool.tags is not None):
        if pool.tags is None:
            raise InputError("mig: label_source=tags but the pool has no 'tags' column; use label_source=kmeans")
        return tag_labels(pool.tags, label_embedder)
    return kmeans_labels(pool.embeddings, n_clusters, label_seed)


@register("mig", needs=("embeddings",),
          params={"threshold": COSINE, "prop_weight": NON_NEGATIVE, "phi_a": NON_NEGATIVE,
                  "phi_b": number(lo=0, lo_open=True), "gain": one_of("gradient", "exact"),
                  "label_source": LABEL_SOURCE, "n_clusters": POSITIVE_INT, "label_seed": SEED,
                  "quality_source": QUALITY_SOURCE},
          signals=lambda p, seed: mig_label_needs(p["label_source"], p["n_clusters"], p["label_seed"],
                                                  p["label_embedder"]))
def mig_subset(pool: PoolInputs, n: int, seed: int, threshold: float = 0.9, prop_weight: float = 1.0,
               phi_a: float = PHI_A, phi_b: float = PHI_B, norm: bool = False, gain: str = "gradient",
               label_source: str = "auto", n_clusters: int = 256, label_seed: int = 0,
               quality_source: str = "auto", label_embedder: str = "packaged:minilm") -> Selection:
    """MIG (selection.submodular.mig) on the pool-wide label graph; the graph's size goes into provenance.
    MIG is deterministic: the subset seed is unused (``label_seed`` seeds the k-means labels)."""
    labels = mig_pool_labels(pool, label_source, n_clusters, label_seed, label_embedder)
    quality, quality_used = resolve_quality(quality_source, pool.quality, pool.proxy_quality)
    model = InformationModel.build(labels.vectors, threshold, prop_weight, where="mig selector")
    picks = mig(labels.labels, labels.vectors, quality, n, threshold=threshold, prop_weight=prop_weight,
                phi_a=phi_a, phi_b=phi_b, norm=norm, gain=gain, model=model)
    return Selection(picks, {"label_source": labels.source, "quality_source": quality_used,
                             "label_graph": model.stats})
