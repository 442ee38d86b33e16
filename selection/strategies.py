"""The remaining subset builders of the study: k-means, farthest, QDIT, Repr Filter and MIG.

QDIT's facility-location greedy uses lazy evaluation (Minoux 1978): marginal gains of a submodular function
only shrink, so a stale gain is an upper bound and most candidates are never re-evaluated. No maintained
library here offers it over a torch/faiss similarity without an N x N matrix, hence this implementation.
"""

from __future__ import annotations

import heapq
import logging

import numpy as np
import torch

from metrics.knn import unit_rows
from metrics.mig import PHI_A, PHI_B, phi, propagation_matrix, sample_information
from metrics.validation import InputError
from selection.registry import PoolInputs, register
from selection.signals import kmeans_labels, resolve_quality, tag_labels

log = logging.getLogger(__name__)


@register("kmeans", needs=("embeddings",))
def kmeans_subset(pool: PoolInputs, n: int, seed: int, n_clusters: int = 10) -> list[int]:
    """k-means (faiss, cosine) on the pool, then an equal share drawn uniformly from every cluster; the share a
    small cluster cannot fill goes to the others, largest remaining first."""
    labels, _ = kmeans_labels(pool.embeddings, n_clusters, seed)
    members = [np.flatnonzero(np.array([lab[0] for lab in labels]) == c) for c in range(n_clusters)]
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
    return np.concatenate(picks).tolist()


@register("farthest", needs=("embeddings",))
def farthest_subset(pool: PoolInputs, n: int, seed: int) -> list[int]:
    """The n rows with the largest cosine distance to the pool's mean direction: an outlier-heavy arm.
    (Our reading of the paper's "Farthest"; deterministic, so the seed is unused.)"""
    unit = unit_rows(pool.embeddings, "cpu", torch.float64)
    centre = torch.nn.functional.normalize(unit.mean(dim=0), dim=0)
    dist = (1.0 - unit @ centre).numpy()
    return np.argsort(-dist, kind="stable")[:n].tolist()


@register("qdit", needs=("embeddings",))
def qdit_subset(pool: PoolInputs, n: int, seed: int, alpha: float = 0.5, quality_source: str = "auto",
                reference_size: int | None = 20000, device: str = "cpu") -> list[int]:
    """QDIT (Bukharin et al. 2024): greedy on alpha * FL(S) / |R| + (1 - alpha) * sum_{s in S} quality_s, with
    FL(S) = sum_{r in R} max(0, max_{s in S} cos(r, s)). R is the pool, or a seeded sample of reference_size
    rows of it for large pools."""
    if not 0 <= alpha <= 1:
        raise InputError(f"qdit: alpha must be in [0, 1], got {alpha}")
    quality, _ = resolve_quality(quality_source, pool.quality, pool.proxy_quality)
    unit = unit_rows(pool.embeddings, device)
    ref_rows = np.arange(pool.size)
    if reference_size is not None and reference_size < pool.size:
        ref_rows = np.sort(np.random.default_rng(seed).choice(pool.size, reference_size, replace=False))
    ref = unit[torch.as_tensor(ref_rows, device=device)]
    cover = torch.zeros(len(ref_rows), device=device, dtype=unit.dtype)

    def gain(c: int) -> float:
        fl = torch.clamp(ref @ unit[c] - cover, min=0).sum() / len(ref_rows)
        return float(alpha * fl + (1 - alpha) * quality[c])

    heap = [(-gain(c), c) for c in range(pool.size)]
    heapq.heapify(heap)
    picks: list[int] = []
    while len(picks) < n:
        _, c = heapq.heappop(heap)
        fresh = gain(c)
        if not heap or fresh >= -heap[0][0] - 1e-12:
            picks.append(c)
            cover = torch.maximum(cover, ref @ unit[c])
        else:
            heapq.heappush(heap, (-fresh, c))
    return picks


@register("repr_filter", needs=("embeddings",))
def repr_filter_subset(pool: PoolInputs, n: int, seed: int, threshold: float = 0.9,
                       quality_source: str = "auto") -> list[int]:
    """DEITA's Repr Filter (Liu et al. 2024): rows by descending quality, a row kept when its max cosine
    similarity to the rows already kept is <= threshold, until n are kept. Ties in quality break by index."""
    quality, _ = resolve_quality(quality_source, pool.quality, pool.proxy_quality)
    unit = unit_rows(pool.embeddings, "cpu")
    kept = torch.empty((n, unit.shape[1]), dtype=unit.dtype)
    picks: list[int] = []
    for c in np.argsort(-quality, kind="stable"):
        if picks and float((kept[:len(picks)] @ unit[c]).max()) > threshold:
            continue
        kept[len(picks)] = unit[c]
        picks.append(int(c))
        if len(picks) == n:
            return picks
    raise InputError(f"repr_filter: only {len(picks)} rows pass the similarity threshold {threshold}; "
                     f"n={n} needs a higher threshold or a larger pool")


def _mig_labels(pool: PoolInputs, label_source: str, n_clusters: int, seed: int,
                embedder: str) -> tuple[list[list[int]], np.ndarray]:
    if label_source not in ("tags", "kmeans", "auto"):
        raise InputError(f"mig: label_source must be 'tags', 'kmeans' or 'auto', got {label_source!r}")
    if label_source == "tags" or (label_source == "auto" and pool.tags is not None):
        if pool.tags is None:
            raise InputError("mig: label_source=tags but the pool has no 'tags' column; use label_source=kmeans")
        return tag_labels(pool.tags, embedder)
    return kmeans_labels(pool.embeddings, n_clusters, seed)


@register("mig", needs=("embeddings",))
def mig_subset(pool: PoolInputs, n: int, seed: int, threshold: float = 0.9, alpha: float = 1.0,
               label_source: str = "auto", n_clusters: int = 64, quality_source: str = "auto",
               gain: str = "exact", label_embedder: str = "packaged:minilm") -> list[int]:
    """MIG: greedily add the row with the largest information gain E(S + i) - E(S) (metrics.mig).
    ``gain='gradient'`` uses the MIG authors' first-order approximation, phi'(x_S) . u_i, instead."""
    if gain not in ("exact", "gradient"):
        raise InputError(f"mig: gain must be 'exact' or 'gradient', got {gain!r}")
    labels, vectors = _mig_labels(pool, label_source, n_clusters, seed, label_embedder)
    quality, _ = resolve_quality(quality_source, pool.quality, pool.proxy_quality)
    u = torch.as_tensor(sample_information(labels, quality, propagation_matrix(vectors, threshold, alpha)))
    x = torch.zeros(u.shape[1], dtype=u.dtype)
    taken = torch.zeros(pool.size, dtype=torch.bool)
    picks: list[int] = []
    for _ in range(n):
        if gain == "exact":
            scores = (phi(x[None, :] + u) - phi(x)[None, :]).sum(dim=1)
        else:
            scores = u @ (PHI_B * torch.pow(x + PHI_A, PHI_B - 1))
        scores[taken] = -torch.inf
        best = int(torch.argmax(scores))
        picks.append(best)
        taken[best] = True
        x += u[best]
    return picks
