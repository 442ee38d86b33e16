"""MIG label signals of a pool, shared by the ``mig`` selector and the ``mig_information`` metric so both build one
pool-wide label graph: InsTag-style ``tags`` (the authors' label set, the sorted distinct tags, each embedded with
a sentence embedder: the packaged all-MiniLM-L6-v2 by default), or k-means cluster ids over the row embeddings with
the unit centroids as label vectors (same count and seed for the selector and the metric). In a study they are
computed once, in the pool signals (``metrics.signals``), and both read them there.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from divcore.errors import InputError
from divcore.models import resolve_model
from divcore.params import one_of
from divcore.rows import normalize_rows
from metrics.validation import as_embeddings

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


@dataclass(frozen=True)
class Clustering:
    """A k-means fit of a pool: the centroids and each pool row's nearest centroid. ``spherical``: fitted on unit
    rows with faiss' inner-product index (MIG's labels), else on the raw rows with an L2 index (partition entropy)."""

    centroids: np.ndarray
    ids: np.ndarray
    spherical: bool

    def assign(self, rows: np.ndarray) -> np.ndarray:
        """The nearest centroid of each of ``rows`` (unit-normalised first when spherical), by the same faiss index
        type the fit used, so a pool row gets its ``ids`` entry."""
        x = as_embeddings(rows, "embeddings", cosine=self.spherical)
        index = faiss.IndexFlatIP(x.shape[1]) if self.spherical else faiss.IndexFlatL2(x.shape[1])
        index.add(self.centroids)
        _, ids = index.search(normalize_rows(x) if self.spherical else x, 1)
        return ids[:, 0]

    def labels(self) -> PoolLabels:
        """MIG's view: one label per row, the unit centroids as the label graph's nodes."""
        return PoolLabels([[int(i)] for i in self.ids], self.centroids, "kmeans")


def spherical_kmeans(embeddings: np.ndarray, n_clusters: int, seed: int) -> Clustering:
    """k-means over the unit rows (faiss, spherical, 20 iterations, every row used): MIG's and the ``kmeans``
    selector's clusters."""
    unit = normalize_rows(as_embeddings(embeddings, "pool embeddings"))
    if len(unit) < n_clusters:
        raise InputError(f"MIG: {n_clusters} k-means clusters need at least that many rows; the pool has {len(unit)}")
    km = faiss.Kmeans(unit.shape[1], n_clusters, niter=20, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1)
    km.train(unit)
    _, ids = km.index.search(unit, 1)
    return Clustering(km.centroids.copy(), ids[:, 0], spherical=True)


def kmeans_labels(embeddings: np.ndarray, n_clusters: int, seed: int) -> PoolLabels:
    """One k-means cluster id per row (faiss, spherical) and the unit centroids as label vectors."""
    return spherical_kmeans(embeddings, n_clusters, seed).labels()


def kmeans_assign(rows: np.ndarray, pool: np.ndarray, n_clusters: int, seed: int) -> tuple[list[list[int]],
                                                                                             PoolLabels]:
    """Cluster ids of ``rows`` under the k-means fitted on ``pool`` (the same fit the selector uses). In the study
    the fit comes from the pool signals (metrics.signals) instead, computed once."""
    fit = spherical_kmeans(pool, n_clusters, seed)
    return [[int(i)] for i in fit.assign(rows)], fit.labels()
