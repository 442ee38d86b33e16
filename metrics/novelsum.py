"""NovelSum (Yang et al., "Measuring Data Diversity for Instruction Tuning", ACL 2025) and DistSum.

NovelSum of a subset X with density reference R::

    v_i      = weighted average over j of  d(x_i, x_j) * rho   (entries sorted ascending, weight rank**-A)
    rho      = 1 / (mean of the K nearest squared-L2 distances in unique(R) + 1e-9) ** B
    NovelSum = mean_i v_i

with d the cosine distance. Two modes:

* ``reference`` (default) is the authors' code (UmeanNever/NovelSum ``novelsum.py``) exactly: the zero
  self-distance stays in each row (the nearest other sample gets weight 1/2), row i is scaled by the density of
  x_i, and the first kNN hit is always dropped.
* ``paper`` follows the paper's formula (its eq. for v(x_i) with the proximity weight)::

      v_i = sum_{j != i} w_ij * rho_j * d_ij / sum_{j != i} w_ij,    w_ij = rank_i(j) ** -A

  where rank_i orders the *other* rows by increasing d_ij (ties by row index), so the weight follows the
  distance alone, and rho_j, the density of the other sample, is computed exactly as in ``reference`` mode.

Why not the authors' code as is: it holds the full N x N matrix and sorts it once per grid point; here rows are
processed in blocks (memory O(block x N)), sorted once, and every grid point reuses that sort, the cosine
matrix and one kNN search at the largest K.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch

from divcore.errors import InputError
from divcore.rows import normalize_rows
from metrics.knn import density_from_sq, knn_sq_distances, unit_rows
from metrics.validation import as_embeddings, check_nonnegative, check_positive_int, check_same_dim

Mode = Literal["reference", "paper"]


def grid_key(neighbors: int, density_power: float, distance_power: float) -> str:
    """Column name of one NovelSum configuration, e.g. ``neighbors=10,density_power=0.5,distance_power=1``."""
    return f"neighbors={neighbors:d},density_power={density_power:g},distance_power={distance_power:g}"


def _rank_weights(n: int, power: float, device: str) -> torch.Tensor:
    return torch.arange(1, n + 1, device=device, dtype=torch.float64).pow(-power)


def _weighted_sorted_mean(sorted_rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (sorted_rows.double() @ weights) / weights.sum()


def _densities(x: np.ndarray, reference: np.ndarray, neighbors: Sequence[int], powers: Sequence[float],
               device: str, knn_sq: np.ndarray | None = None) -> dict[tuple[int, float], np.ndarray]:
    if knn_sq is None:
        sq = knn_sq_distances(x, reference, max(neighbors), mode="reference", device=device)
    elif knn_sq.shape[0] != x.shape[0] or knn_sq.shape[1] < max(neighbors):
        raise InputError(f"knn_sq has shape {knn_sq.shape}; NovelSum needs one row per embedding and at least "
                         f"{max(neighbors)} neighbours")
    else:
        sq = knn_sq
    out = {}
    for k, b in itertools.product(neighbors, powers):
        out[(k, b)] = density_from_sq(sq[:, :k], b)
    return out


def novelsum_grid(embeddings: np.ndarray, reference: np.ndarray | None = None, *,
                  neighbors: Iterable[int] = (5, 10), density_powers: Iterable[float] = (0.0, 0.25, 0.5),
                  distance_powers: Iterable[float] = (0.0, 1.0, 2.0), mode: Mode = "reference",
                  block_size: int = 1024, device: str = "cpu", knn_sq: np.ndarray | None = None) -> dict[str, float]:
    """NovelSum over a hyperparameter grid, sharing one kNN search and one blocked, sorted distance matrix.

    Returns ``{grid_key(K, B, A): value}`` for every K in ``neighbors``, B in ``density_powers`` and A in
    ``distance_powers``. ``reference=None`` uses the embeddings as their own density reference. ``knn_sq``: the
    embeddings' reference-mode squared kNN distances, already computed (the study's pool signals,
    :mod:`metrics.signals`), at least ``max(neighbors)`` columns; the search is then skipped.
    """
    x = as_embeddings(embeddings, "embeddings", min_rows=2)
    ref = x if reference is None else as_embeddings(reference, "reference")
    check_same_dim(x, ref)
    if mode not in ("reference", "paper"):
        raise InputError(f"unknown NovelSum mode {mode!r}; use 'reference' or 'paper'")
    ks = sorted({check_positive_int(k, "neighbors") for k in neighbors})
    bs = sorted({check_nonnegative(b, "density_power") for b in density_powers})
    as_ = sorted({check_nonnegative(a, "distance_power") for a in distance_powers})
    if not ks or not bs or not as_:
        raise InputError("the NovelSum grid is empty: give at least one neighbors, density_power and distance_power")
    block_size = check_positive_int(block_size, "block_size")
    dens = _densities(x, ref, ks, bs, device, knn_sq)
    if mode == "reference":
        row_means = _reference_row_means(x, as_, block_size, device)
        return {grid_key(k, b, a): float(np.mean(dens[(k, b)] * row_means[a]))
                for k, b, a in itertools.product(ks, bs, as_)}
    return _paper_grid(x, dens, ks, bs, as_, block_size, device)


def _reference_row_means(x: np.ndarray, distance_powers: Sequence[float], block_size: int,
                         device: str) -> dict[float, np.ndarray]:
    """Per-row rank-weighted average of the sorted cosine distances, self-distance included."""
    unit = unit_rows(x, device)
    n = unit.shape[0]
    weights = {a: _rank_weights(n, a, device) for a in distance_powers}
    out = {a: np.empty(n) for a in distance_powers}
    for start in range(0, n, block_size):
        rows = (1.0 - unit[start:start + block_size] @ unit.T).sort(dim=1).values
        for a, w in weights.items():
            out[a][start:start + rows.shape[0]] = _weighted_sorted_mean(rows, w).cpu().numpy()
    return out


def _paper_grid(x: np.ndarray, dens: dict[tuple[int, float], np.ndarray], ks: Sequence[int],
                bs: Sequence[float], as_: Sequence[float], block_size: int, device: str) -> dict[str, float]:
    """Each row's other rows sorted once by distance (stable: ties by index); every grid point reuses the sort."""
    unit = unit_rows(x, device)
    n = unit.shape[0]
    weights = {a: _rank_weights(n - 1, a, device) for a in as_}
    sums = {(k, b, a): 0.0 for k, b, a in itertools.product(ks, bs, as_)}
    rho = {kb: torch.as_tensor(d, device=device, dtype=torch.float64) for kb, d in dens.items()}
    for start in range(0, n, block_size):
        dist = 1.0 - unit[start:start + block_size] @ unit.T
        rows = torch.arange(dist.shape[0], device=device)
        dist[rows, rows + start] = torch.inf  # the sample's own column, not its duplicates
        ordered, order = dist.sort(dim=1, stable=True)
        ordered, order = ordered[:, :-1].double(), order[:, :-1]
        for (k, b), r in rho.items():
            weighted = ordered * r[order]
            for a, w in weights.items():
                sums[(k, b, a)] += float(((weighted @ w) / w.sum()).sum())
    return {grid_key(k, b, a): s / n for (k, b, a), s in sums.items()}


def novelsum(embeddings: np.ndarray, reference: np.ndarray | None = None, *, neighbors: int = 10,
             density_power: float = 0.5, distance_power: float = 1.0, mode: Mode = "reference",
             block_size: int = 1024, device: str = "cpu", knn_sq: np.ndarray | None = None) -> float:
    """NovelSum of one subset (see the module docstring for the formula and the two modes).

    Parameters
    ----------
    embeddings : (N, D) array, the subset. N >= 2.
    reference : (M, D) array or None, the pool on which density is estimated (None: the subset itself).
    neighbors : K, nearest neighbours for the density estimate.
    density_power : B, exponent of the density factor (0 switches density off).
    distance_power : A, exponent of the proximity weight rank**-A (0: plain mean).
    knn_sq : (N, >= K) array or None, the precomputed reference-mode squared kNN distances (see novelsum_grid).

    Examples
    --------
    >>> import numpy as np
    >>> round(novelsum(np.eye(3), neighbors=1, density_power=0, distance_power=0), 6)
    0.666667
    """
    key = grid_key(check_positive_int(neighbors, "neighbors"), check_nonnegative(density_power, "density_power"),
                   check_nonnegative(distance_power, "distance_power"))
    return novelsum_grid(embeddings, reference, neighbors=[neighbors], density_powers=[density_power],
                         distance_powers=[distance_power], mode=mode, block_size=block_size, device=device,
                         knn_sq=knn_sq)[key]


def distsum_cosine(embeddings: np.ndarray) -> float:
    """DistSum: mean pairwise cosine distance over all N x N pairs, diagonal included (the authors' column).

    Computed in closed form, ``1 - ||sum_i x_i / ||x_i||| ** 2 / N ** 2``, in O(N D) time and memory.

    >>> distsum_cosine(np.eye(2))
    0.5
    """
    x = as_embeddings(embeddings, "embeddings")
    unit = normalize_rows(x.astype(np.float64))
    total = unit.sum(axis=0)
    return float(1.0 - total @ total / unit.shape[0] ** 2)
