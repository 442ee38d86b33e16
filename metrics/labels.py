"""MIG label signals of a pool: InsTag-style ``tags`` embedded with a sentence embedder (the packaged
all-MiniLM-L6-v2 by default, as MIG does with its embedder), or k-means cluster ids over the row embeddings with the
normalised centroids as label vectors. Both the ``mig_information`` metric and the ``mig`` selector use these.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from divcore.models import resolve_model
from divcore.rows import normalize_rows
from metrics.validation import InputError


def kmeans_labels(embeddings: np.ndarray, n_clusters: int, seed: int) -> tuple[list[list[int]], np.ndarray]:
    """One k-means cluster id per row (faiss, cosine) and the normalised centroids as label vectors."""
    unit = normalize_rows(embeddings)
    if len(unit) < n_clusters:
        raise InputError(f"{n_clusters} clusters need at least that many rows; the pool has {len(unit)}")
    km = faiss.Kmeans(unit.shape[1], n_clusters, niter=20, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(unit, dtype=np.float32))
    _, ids = km.index.search(np.ascontiguousarray(unit, dtype=np.float32), 1)
    return [[int(i)] for i in ids[:, 0]], km.centroids.copy()


def tag_labels(tags: Sequence[Sequence[str]], embedder: str) -> tuple[list[list[int]], np.ndarray]:
    """Map string tags to ids and embed each distinct tag with a sentence embedder (a model spec, see
    ``divcore.models.resolve_model``)."""
    from sentence_transformers import SentenceTransformer

    vocab = sorted({t for row in tags for t in row})
    if not vocab:
        raise InputError("the pool's tags are all empty")
    ids = {t: i for i, t in enumerate(vocab)}
    model = SentenceTransformer(resolve_model(embedder, ""))
    vectors = model.encode(vocab, normalize_embeddings=True, convert_to_numpy=True)
    return [[ids[t] for t in row] for row in tags], vectors
