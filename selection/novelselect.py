"""NovelSelect (Yang et al., ACL 2025): greedy selection maximising density-weighted, proximity-weighted novelty.

The score of a candidate c given the selected set S is (the authors' ``novelselect.py`` semantics)::

    v_cs     = d(c, s) * (rho_c + rho_s)         d: cosine distance, rho: local density (metrics.knn)
    score(c) = (1 / |S|) * sum_r r ** -A * v_c(r)    v_c(1) <= v_c(2) <= ...  sorted over s in S

optionally times a per-row quality score (paper, section 6). The first pick is
``np.random.seed(seed); np.random.randint(0, N)``; then the unselected argmax is taken each step.

The authors recompute and re-sort the N x |S| matrix at every step (O(N |S| D) plus a sort). Here each row
keeps its values sorted and one new value is inserted per step, so a step costs one matrix-vector product and
O(N |S|) element operations, done in row chunks so the working memory stays O(chunk x |S|). With A = 0 the
order does not matter and a running sum replaces the sorted state.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from divcore.errors import InputError
from divcore.params import NON_NEGATIVE, POSITIVE_INT, one_of
from metrics.knn import density_from_sq, local_density, self_density_from_gram, unit_rows
from metrics.signals import SignalNeeds
from metrics.validation import as_embeddings, check_nonnegative, check_positive_int
from selection.kcenter import first_pick
from selection.registry import PoolInputs, register

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _SortedRows:
    """Per-candidate ascending values with rank-weighted sums, grown by one rank per step.

    Stored rank-major, ``(capacity, n_rows)`` and padded with +inf, so every per-rank operation reads
    contiguous memory. Inserting v into a sorted column needs no search: the new j-th value is
    ``max(old[j-1], min(old[j], v))``, two element-wise passes.
    """

    def __init__(self, n_rows: int, capacity: int, power: float, device: str, dtype: torch.dtype,
                 chunk: int) -> None:
        self.vals = torch.full((capacity, n_rows), torch.inf, device=device, dtype=dtype)
        self.weights = torch.arange(1, capacity + 1, device=device, dtype=dtype).pow(-power)
        self.m = 0
        self.chunk = min(chunk, n_rows)
        self.low = torch.empty((capacity, self.chunk), device=device, dtype=dtype)  # reused scratch

    def insert_and_score(self, new: torch.Tensor) -> torch.Tensor:
        """Insert ``new[i]`` into candidate i's sorted values and return every candidate's weighted sum."""
        m = self.m
        scores = torch.empty_like(new)
        w = self.weights[:m + 1]
        for lo in range(0, new.shape[0], self.chunk):
            hi = min(lo + self.chunk, new.shape[0])
            vals = self.vals[:m + 1, lo:hi]
            low = self.low[:m + 1, :hi - lo]
            torch.minimum(vals, new[None, lo:hi], out=low)
            torch.maximum(vals[:m], low[1:], out=low[1:])
            vals.copy_(low)
            torch.mv(low.T, w, out=scores[lo:hi])
        self.m += 1
        return scores


def _density_and_distances(x: np.ndarray, neighbors: int, density_power: float, device: str, dtype: torch.dtype,
                           gram_max_bytes: int, knn_sq: np.ndarray | None = None
                           ) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
    """Every row's density, and a function giving the cosine distances from row s to every row. ``knn_sq``: the
    pool's reference-mode kNN distances (the pool signals), used where the Gram matrix does not fit."""
    n = x.shape[0]
    if n * n * torch.finfo(dtype).bits // 8 <= gram_max_bytes:
        gram, rho, inverse = self_density_from_gram(x, neighbors, density_power, device=device, dtype=dtype)
        norms = torch.diagonal(gram).sqrt().clamp_min(1e-12)  # F.normalize's floor: a zero row is at distance 1
        if gram.shape[0] < n:  # duplicate rows share their distinct row's entries
            inv = torch.as_tensor(inverse, device=device)
            row_norms = norms[inv]
            return rho[inv], lambda s: 1.0 - gram[inv[s]][inv] / (row_norms * row_norms[s])
        return rho, lambda s: 1.0 - gram[s] / (norms * norms[s])
    if knn_sq is None:
        density = local_density(x, x, neighbors, density_power, device=device)
    else:  # the same search at a K >= neighbors: its first columns are this search's distances
        density = density_from_sq(knn_sq[:, :check_positive_int(neighbors, "neighbors")],
                                  check_nonnegative(density_power, "density_power"))
    rho = torch.as_tensor(density, device=device, dtype=dtype)
    unit = unit_rows(x, device, dtype)
    return rho, lambda s: 1.0 - unit @ unit[s]


def novelselect(embeddings: np.ndarray, k: int, *, neighbors: int = 10, density_power: float = 0.5,
                distance_power: float = 1.0, seed: int = 42, quality: np.ndarray | None = None,
                device: str = "cpu", dtype: str = "float32", chunk_rows: int = 65536,
                gram_max_bytes: int = 2**31, progress: bool = True, knn_sq: np.ndarray | None = None) -> list[int]:
    """Select ``k`` rows of ``embeddings`` with NovelSelect; returns their indices in pick order.

    Density is estimated on the pool itself with the authors' neighbour rule (metrics.knn, mode
    ``reference``). ``quality`` (one non-negative score per row) multiplies each candidate's score.
    When the pool's Gram matrix fits in ``gram_max_bytes``, one GEMM serves both the kNN density and every
    step's cosine distances (a row read instead of a pass over the whole pool per step); larger pools use a
    faiss kNN search (or ``knn_sq``, the pool's kNN distances precomputed at K >= ``neighbors``: the pool signals)
    and one matrix-vector product per step.
    """
    x = as_embeddings(embeddings, "pool embeddings")
    n = x.shape[0]
    k = check_positive_int(k, "k")
    if k > n:
        raise InputError(f"NovelSelect: k={k} is larger than the pool ({n} rows)")
    distance_power = check_nonnegative(distance_power, "distance_power")
    if dtype not in _DTYPES:
        raise InputError(f"NovelSelect: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    tdtype = _DTYPES[dtype]
    rho, cosine_distances = _density_and_distances(x, neighbors, density_power, device, tdtype, gram_max_bytes,
                                                   knn_sq)
    q = None
    if quality is not None:
        q = np.asarray(quality, dtype=np.float64)
        if q.shape != (n,) or not np.isfinite(q).all() or (q < 0).any():
            raise InputError(f"NovelSelect: quality must be {n} finite non-negative scores, got shape {q.shape}")
        q = torch.as_tensor(q, device=device, dtype=tdtype)
    state = None if distance_power == 0 else _SortedRows(n, k, distance_power, device, tdtype, chunk_rows)
    running = torch.zeros(n, device=device, dtype=tdtype)
    picks = [first_pick(n, seed)]
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    for step in tqdm(range(1, k), desc="NovelSelect", disable=not progress or k < 2):
        s = picks[-1]
        taken[s] = True
        new = cosine_distances(s) * (rho + rho[s])
        if state is None:
            running += new
            scores = running / step
        else:
            scores = state.insert_and_score(new) / step
        if q is not None:
            scores = scores * q
        scores[taken] = -torch.inf
        picks.append(int(torch.argmax(scores)))
    return picks


@register("novelselect", needs=("embeddings",),
          params={"neighbors": POSITIVE_INT, "density_power": NON_NEGATIVE, "distance_power": NON_NEGATIVE,
                  "dtype": one_of(*_DTYPES)},
          signals=lambda p, seed: SignalNeeds(knn_k=p["neighbors"]))
def novelselect_subset(pool: PoolInputs, n: int, seed: int, neighbors: int = 10, density_power: float = 0.5,
                       distance_power: float = 1.0, use_quality: bool = False, device: str = "cpu",
                       dtype: str = "float32") -> list[int]:
    """Registry wrapper; ``use_quality`` multiplies scores by the pool's quality column (paper, section 6). The
    density of a pool too large for one Gram matrix comes from the pool signals' kNN when given."""
    if use_quality and pool.quality is None:
        raise InputError("novelselect: use_quality=true but the pool has no quality scores")
    return novelselect(pool.embeddings, n, neighbors=neighbors, density_power=density_power,
                       distance_power=distance_power, seed=seed,
                       quality=pool.quality if use_quality else None, device=device, dtype=dtype,
                       knn_sq=None if pool.signals is None else pool.signals.knn(np.arange(pool.size), neighbors))
