"""Greedy maximisers of the two quality-aware submodular objectives of the study: QDIT and MIG.

QDIT (Bukharin et al. 2024, "Data Diversity Matters for Robust Instruction Tuning", sec. 3): greedy on

    f(S) = (1 - alpha) * d(S) + alpha * q(S)
    d(S) = (1 / |R|) * sum_{r in R} max(0, max_{s in S} cos(r, s))     facility location over the reference R
    q(S) = sum_{s in S} q~_s,  q~ = (q - min q) / (max q - min q)       quality min-max scaled over the pool

so ``alpha`` weights *quality* (alpha = 1: top quality; alpha = 0: pure facility location). The paper puts
the two terms on one scale before mixing them; divbench's reading of that is d as a mean over R (in [0, 1]
for cosine similarity) and quality min-max scaled to [0, 1] (``quality_scale="none"`` keeps raw scores).
The facility location is the similarity form with d(empty set) = 0, so a reference row only counts the part
of its similarity above 0. The greedy uses lazy evaluation (Minoux 1978): marginal gains of a submodular
function only shrink, so a stale gain bounds the fresh one and most candidates are never re-evaluated; no
maintained library offers it over a torch similarity without an N x N matrix, hence this implementation.

MIG (Chen et al. 2025; yichengchen24/MIG ``MIGSampler``): greedy on the information gain of
:mod:`metrics.mig`. ``gain="gradient"`` (default) is the authors' rule: score_i = u_i . phi'(x_S), the first-
order gain, with every row's score and the selected information x_S held in float32 as theirs; ties go to the
lowest row index (their ``torch.argmax`` over the remaining rows in pool order). ``gain="exact"`` scores
E(S + i) - E(S) instead, a documented alternative.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from divcore.errors import InputError
from metrics.knn import unit_rows
from metrics.mig import PHI_A, PHI_B, InformationModel, _check_params, phi, phi_gradient, sample_information
from metrics.validation import as_embeddings, check_positive_int, check_same_dim


def _scaled_quality(quality: np.ndarray, n: int, scale: str) -> np.ndarray:
    q = np.asarray(quality, dtype=np.float64)
    if q.shape != (n,) or not np.isfinite(q).all():
        raise InputError(f"qdit: quality must be {n} finite scores, one per row, got shape {q.shape}")
    if scale == "none":
        return q
    if scale != "minmax":
        raise InputError(f"qdit: quality_scale must be 'minmax' or 'none', got {scale!r}")
    span = q.max() - q.min()
    return (q - q.min()) / span if span > 0 else np.zeros_like(q)


def qdit(embeddings: np.ndarray, quality: np.ndarray, k: int, *, alpha: float = 0.9,
         reference: np.ndarray | None = None, quality_scale: str = "minmax", device: str = "cpu",
         progress: bool = True) -> list[int]:
    """QDIT's greedy selection of ``k`` rows (module docstring: objective, scaling); returns them in pick order.

    ``reference``: the rows whose coverage the facility location counts (None: the pool itself).
    """
    x = as_embeddings(embeddings, "pool embeddings")
    n = x.shape[0]
    k = check_positive_int(k, "k")
    if k > n:
        raise InputError(f"qdit: k={k} is larger than the pool ({n} rows)")
    if not 0 <= float(alpha) <= 1:
        raise InputError(f"qdit: alpha must be in [0, 1], got {alpha}")
    q = _scaled_quality(quality, n, quality_scale)
    unit = unit_rows(x, device)
    if reference is None:
        ref = unit
    else:
        ref_arr = as_embeddings(reference, "reference")
        check_same_dim(x, ref_arr)
        ref = unit_rows(ref_arr, device)
    cover = torch.zeros(ref.shape[0], device=device, dtype=unit.dtype)

    def gain(c: int) -> float:
        fl = float(torch.clamp(ref @ unit[c] - cover, min=0).sum(dtype=torch.float64)) / ref.shape[0]
        return (1 - alpha) * fl + alpha * float(q[c])

    heap = [(-gain(c), c) for c in range(n)]
    heapq.heapify(heap)
    picks: list[int] = []
    bar = tqdm(total=k, desc="QDIT", disable=not progress)
    while len(picks) < k:
        _, c = heapq.heappop(heap)
        fresh = gain(c)
        if not heap or fresh >= -heap[0][0] - 1e-12:
            picks.append(c)
            cover = torch.maximum(cover, ref @ unit[c])
            bar.update()
        else:
            heapq.heappush(heap, (-fresh, c))
    bar.close()
    return picks


def mig(labels: Sequence[Sequence[int]], label_vectors: np.ndarray, quality: np.ndarray | None, k: int, *,
        threshold: float = 0.9, prop_weight: float = 1.0, phi_a: float = PHI_A, phi_b: float = PHI_B,
        norm: bool = False, gain: str = "gradient", progress: bool = True,
        model: InformationModel | None = None) -> list[int]:
    """MIG's greedy selection of ``k`` rows; returns them in pick order (the authors' ``MIGSampler.sample``).

    ``labels``: label ids per row; ``label_vectors``: one (unit) row per label id, the graph's nodes;
    ``quality``: one score per row (None: 1). ``model``: a prebuilt :class:`InformationModel` of the same
    ``label_vectors``, ``threshold`` and ``prop_weight`` (skips rebuilding the graph).
    """
    n = len(labels)
    k = check_positive_int(k, "k")
    if k > n:
        raise InputError(f"mig: k={k} is larger than the pool ({n} rows)")
    if gain not in ("gradient", "exact"):
        raise InputError(f"mig: gain must be 'gradient' (the authors' rule) or 'exact', got {gain!r}")
    _check_params(threshold, prop_weight, phi_a, phi_b)
    model = model or InformationModel.build(label_vectors, threshold, prop_weight, where="mig")
    u = sample_information(labels, quality, model.prop, norm)
    entry_row = np.repeat(np.arange(n), np.diff(u.indptr))
    x = np.zeros(u.shape[1], dtype=np.float32)
    taken = np.zeros(n, dtype=bool)
    picks: list[int] = []
    for _ in tqdm(range(k), desc="MIG", disable=not progress):
        if gain == "gradient":
            scores = u @ phi_gradient(x, np.float32(phi_a), np.float32(phi_b)).astype(np.float32)
        else:
            xl = x[u.indices].astype(np.float64)
            delta = phi(xl + u.data, phi_a, phi_b) - phi(xl, phi_a, phi_b)
            scores = np.bincount(entry_row, weights=delta, minlength=n)
        scores[taken] = -np.inf
        best = int(np.argmax(scores))
        picks.append(best)
        taken[best] = True
        lo, hi = u.indptr[best], u.indptr[best + 1]
        x[u.indices[lo:hi]] += u.data[lo:hi]
    return picks
