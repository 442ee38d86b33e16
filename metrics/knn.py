"""Exact k-nearest-neighbour density on a faiss flat index (CPU here; GPU when faiss-gpu and CUDA are present).

NovelSum and NovelSelect both weight samples by a local density estimated on a reference pool; this module is
the one place that estimate is made, so the metric and the selector can never drift apart.
"""

from __future__ import annotations

import logging
from typing import Literal

import faiss
import numpy as np
import torch

from divcore.errors import InputError
from metrics.validation import check_nonnegative, check_positive_int

log = logging.getLogger(__name__)

NeighbourMode = Literal["reference", "exact"]
DENSITY_EPS = 1e-9  # the authors' regulariser


def flat_l2_index(data: np.ndarray, device: str = "cpu") -> faiss.Index:
    """A faiss ``IndexFlatL2`` holding ``data``, moved to the GPU when ``device`` is CUDA and faiss can."""
    index = faiss.IndexFlatL2(data.shape[1])
    if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources"):
        gpu_id = int(device.split(":")[1]) if ":" in device else 0
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu_id, index)
    elif device.startswith("cuda"):
        log.warning("device=%s but this faiss build has no GPU support; searching on the CPU", device)
    index.add(np.ascontiguousarray(data, dtype=np.float32))
    return index


def _check_distinct_rows(n_distinct: int, neighbors: int) -> None:
    if n_distinct < neighbors + 1:
        raise InputError(f"the reference has {n_distinct} distinct rows; neighbors={neighbors} needs at least "
                         f"{neighbors + 1}: lower neighbors or use a larger reference pool")


def knn_sq_distances(query: np.ndarray, reference: np.ndarray, neighbors: int, *,
                     mode: NeighbourMode = "reference", device: str = "cpu") -> np.ndarray:
    """Squared L2 distances from each query row to its ``neighbors`` nearest rows of the de-duplicated reference.

    ``mode="reference"`` is the NovelSum authors' rule: search ``neighbors + 1`` and always drop the first hit
    (right when every query row is in the reference, where that hit is the row itself). ``mode="exact"`` drops
    the first hit only when it *is* the query row, so a query from outside the reference keeps its true
    nearest neighbour.
    """
    neighbors = check_positive_int(neighbors, "neighbors")
    ref = np.unique(np.asarray(reference, dtype=np.float32), axis=0)
    _check_distinct_rows(ref.shape[0], neighbors)
    dist, idx = flat_l2_index(ref, device).search(np.ascontiguousarray(query, dtype=np.float32), neighbors + 1)
    if mode == "reference":
        return dist[:, 1:]
    if mode != "exact":
        raise InputError(f"unknown neighbour mode {mode!r}; use 'reference' or 'exact'")
    is_self = np.all(ref[idx[:, 0]] == query, axis=1)
    return np.where(is_self[:, None], dist[:, 1:], dist[:, :-1])


def density_from_sq(sq_distances: np.ndarray, power: float) -> np.ndarray:
    """``1 / (row mean of the squared kNN distances + 1e-9) ** power``."""
    return 1.0 / np.power(sq_distances.mean(axis=1).astype(np.float64) + DENSITY_EPS, power)


def unit_rows(x: np.ndarray, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm, as a torch tensor on ``device``."""
    return torch.nn.functional.normalize(torch.as_tensor(x, device=device, dtype=dtype), dim=1)


def local_density(query: np.ndarray, reference: np.ndarray, neighbors: int = 10, power: float = 0.5, *,
                  mode: NeighbourMode = "reference", device: str = "cpu") -> np.ndarray:
    """Density factor ``1 / (mean of the k nearest squared-L2 distances + 1e-9) ** power`` (Yang et al. 2025)."""
    power = check_nonnegative(power, "density_power")
    return density_from_sq(knn_sq_distances(query, reference, neighbors, mode=mode, device=device), power)


def unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows in order of first occurrence, inverse index) of a 2-D array; rows compared byte for byte,
    which is ~3x faster than ``np.unique(axis=0)``'s lexicographic sort of floats. Without duplicates the
    distinct rows are ``x`` itself, in order."""
    x = np.ascontiguousarray(x)
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return x[first[order]], rank[inverse.ravel()]


def self_density_from_gram(x: np.ndarray, neighbors: int, power: float, *, device: str = "cpu",
                           dtype: torch.dtype = torch.float32,
                           block: int = 4096) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """:func:`local_density` of every row of ``x`` against ``x`` itself, from one Gram matrix of its distinct
    rows, which the caller keeps (NovelSelect reads its cosine distances from it instead of one matrix-vector
    product per step). Returns (Gram of the distinct rows, their density, inverse index row -> distinct row).

    Same rule as ``knn_sq_distances(mode="reference")``: neighbours among distinct rows, the first hit dropped;
    squared distances ``|a|^2 + |b|^2 - 2 a.b`` as faiss computes them.
    """
    neighbors = check_positive_int(neighbors, "neighbors")
    power = check_nonnegative(power, "density_power")
    distinct, inverse = unique_rows(np.asarray(x, dtype=np.float32))
    _check_distinct_rows(distinct.shape[0], neighbors)
    xt = torch.as_tensor(distinct, device=device, dtype=dtype)
    gram = xt @ xt.T
    sq = torch.diagonal(gram).clone()
    knn_sq = torch.empty((gram.shape[0], neighbors), device=device, dtype=dtype)
    for lo in range(0, gram.shape[0], block):  # nearest = largest 2 a.b - |b|^2, a row block at a time
        top = (2 * gram[lo:lo + block] - sq[None, :]).topk(neighbors + 1, dim=1).values
        knn_sq[lo:lo + block] = sq[lo:lo + block, None] - top[:, 1:]
    density = density_from_sq(knn_sq.cpu().numpy(), power)
    return gram, torch.as_tensor(density, device=device, dtype=dtype), inverse
