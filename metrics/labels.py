"""MIG label signals of a pool, shared by the ``mig`` selector and the ``mig_information`` metric so both build one
pool-wide label graph: InsTag-style ``tags`` (the authors' label set, the sorted distinct tags, each embedded with
a sentence embedder: the packaged all-MiniLM-L6-v2 by default), or k-means cluster ids over the row embeddings with
the unit centroids as label vectors (same count and seed for the selector and the metric).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from divcore.models import resolve_model
from divcore.params import one_of
from divcore.rows import normalize_rows
from metrics.validation import InputError, as_embeddings

LABEL_SOURCE = one_of("tags", "kmeans", "auto")  # where MIG labels come from (the metric and the selector)


@dataclass(frozen=True)
class PoolLabels:
    """Label ids of every pool row and the label graph's node vectors; ``vocab`` names the tags (None for
    k-means clusters)."""

    labels: list[list[int]]
    vectors: np.ndarray
    source: str
    vocab: tuple[str, ...] | None = None

    def ids_of(self, tags: Sequence[Sequence[str]]) -> list[list[int]]:
        """Label ids of rows given by their tags (a subset of this pool)."""
        index = {t: i for i, t in enumerate(self.vocab or ())}
        missing = sorted({t for row in tags for t in row if t not in index})
        if missing:
            raise InputError(f"MIG: tags {missing[:5]} are not in the pool's label graph; build the graph from the "
                             "pool the subset was drawn from")
        return [[index[t] for t in row] for row in tags]


@functools.lru_cache(maxsize=4)
def _embed_vocab(vocab: tuple[str, ...], embedder: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer  # heavy, only when tags are embedded

    model = SentenceTransformer(resolve_model(embedder, ""))
    return model.encode(list(vocab), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def tag_labels(tags: Sequence[Sequence[str]], embedder: str = "packaged:minilm") -> PoolLabels:
    """The authors' label set: the sorted distinct tags of the pool, each embedded (unit rows)."""
    vocab = tuple(sorted({t for row in tags for t in row}))
    if not vocab:
        raise InputError("MIG: the pool's tags are all empty")
    ids = {t: i for i, t in enumerate(vocab)}
    return PoolLabels([[ids[t] for t in row] for row in tags], _embed_vocab(vocab, embedder), "tags", vocab)


_KMEANS_CACHE: list[tuple[np.ndarray, int, int, PoolLabels, object]] = []


def _kmeans(embeddings: np.ndarray, n_clusters: int, seed: int) -> tuple[PoolLabels, object]:
    for ref, nc, sd, labels, index in _KMEANS_CACHE:  # the study passes the same pool array for every subset
        if ref is embeddings and nc == n_clusters and sd == seed:
            return labels, index
    unit = normalize_rows(as_embeddings(embeddings, "pool embeddings"))
    if len(unit) < n_clusters:
        raise InputError(f"MIG: {n_clusters} k-means clusters need at least that many rows; the pool has {len(unit)}")
    km = faiss.Kmeans(unit.shape[1], n_clusters, niter=20, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1)
    km.train(unit)
    _, ids = km.index.search(unit, 1)
    labels = PoolLabels([[int(i)] for i in ids[:, 0]], km.centroids.copy(), "kmeans")
    _KMEANS_CACHE[:] = [(embeddings, n_clusters, seed, labels, km.index)]
    return labels, km.index


def kmeans_labels(embeddings: np.ndarray, n_clusters: int, seed: int) -> PoolLabels:
    """One k-means cluster id per row (faiss, spherical) and the unit centroids as label vectors."""
    return _kmeans(embeddings, n_clusters, seed)[0]


def kmeans_assign(rows: np.ndarray, pool: np.ndarray, n_clusters: int, seed: int) -> tuple[list[list[int]],
                                                                                             PoolLabels]:
    """Cluster ids of ``rows`` under the k-means fitted on ``pool`` (the same fit the selector uses)."""
    labels, index = _kmeans(pool, n_clusters, seed)
    unit = normalize_rows(as_embeddings(rows, "embeddings"))
    _, ids = index.search(unit, 1)
    return [[int(i)] for i in ids[:, 0]], labels
