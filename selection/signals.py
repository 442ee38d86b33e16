"""Per-row signals some selectors need when the pool does not carry them: quality scores and labels.

* Quality: the pool's ``quality`` column when present. Otherwise an offline proxy, the normalised log length of
  the assistant turns, ``log(1 + words) / max log(1 + words)``: response length is the strongest single
  correlate of judged quality in instruction data (Zhao et al. 2024, "Long Is More for Alignment"); it needs
  no model and no network. It is a proxy, named ``length_proxy`` in provenance.
* Labels for MIG: the pool's InsTag-style ``tags`` when present (embedded with the packaged all-MiniLM-L6-v2 to
  build the label graph, as MIG does with its embedder). Otherwise k-means cluster ids over the row embeddings,
  with the normalised centroids as label vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import faiss
import numpy as np

from metrics.validation import InputError

log = logging.getLogger(__name__)


def length_proxy(conversations: Sequence[dict]) -> np.ndarray:
    words = np.array([sum(len(m["content"].split()) for m in c["messages"] if m["role"] == "assistant")
                      for c in conversations], dtype=np.float64)
    score = np.log1p(words)
    return score / score.max() if score.max() > 0 else np.ones_like(score)


def resolve_quality(source: str, data: np.ndarray | None, proxy: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Pick the quality scores by ``source`` (data | proxy | auto); returns (scores, the source used)."""
    if source not in ("data", "proxy", "auto"):
        raise InputError(f"quality source must be 'data', 'proxy' or 'auto', got {source!r}")
    if source == "data" or (source == "auto" and data is not None):
        if data is None:
            raise InputError("quality_source=data but the pool has no 'quality' column: add one, or use "
                             "quality_source=proxy")
        return np.asarray(data, dtype=np.float64), "data"
    if proxy is None:
        raise InputError("no quality scores: the pool has no 'quality' column and no proxy was computed")
    return np.asarray(proxy, dtype=np.float64), "length_proxy"


def kmeans_labels(embeddings: np.ndarray, n_clusters: int, seed: int) -> tuple[list[list[int]], np.ndarray]:
    """One k-means cluster id per row (faiss, cosine) and the normalised centroids as label vectors."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    if len(unit) < n_clusters:
        raise InputError(f"{n_clusters} clusters need at least that many rows; the pool has {len(unit)}")
    km = faiss.Kmeans(unit.shape[1], n_clusters, niter=20, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(unit, dtype=np.float32))
    _, ids = km.index.search(np.ascontiguousarray(unit, dtype=np.float32), 1)
    return [[int(i)] for i in ids[:, 0]], km.centroids.copy()


def tag_labels(tags: Sequence[Sequence[str]], embedder: str) -> tuple[list[list[int]], np.ndarray]:
    """Map string tags to ids and embed each distinct tag with a sentence embedder."""
    from sentence_transformers import SentenceTransformer

    vocab = sorted({t for row in tags for t in row})
    if not vocab:
        raise InputError("the pool's tags are all empty")
    ids = {t: i for i, t in enumerate(vocab)}
    vectors = SentenceTransformer(embedder).encode(vocab, normalize_embeddings=True, convert_to_numpy=True)
    return [[ids[t] for t in row] for row in tags], vectors
