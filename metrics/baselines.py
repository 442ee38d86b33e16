"""Baseline diversity metrics the NovelSum paper compares against (Yang et al. 2025, Table 1 and its sources).

Each is a plain function of validated inputs; cosine metrics L2-normalise rows first, so rescaling a row
changes nothing. Pairwise sums are computed in row blocks so no N x N matrix is held beyond ``block_size`` rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import faiss
import numpy as np
import torch

from divcore.errors import InputError
from divcore.rows import normalize_rows
from metrics.labels import Clustering
from metrics.validation import as_embeddings, check_positive_int, check_same_dim

_WORD = re.compile(r"\w+", re.UNICODE)


def _unit(x: np.ndarray) -> np.ndarray:
    x = as_embeddings(x).astype(np.float64)
    return normalize_rows(x)


def _unit32(x: np.ndarray, name: str = "reference") -> np.ndarray:
    """Unit rows in float32 with float64-accumulated norms, and no float64 copy of ``x``: a paper-scale
    reference (396k x 4096) would take 13 GB in float64."""
    x = as_embeddings(x, name)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return x / norms.astype(np.float32)[:, None]


def _words(texts: Sequence[str]) -> list[str]:
    if not texts:
        raise InputError("the subset has no texts")
    return [w for t in texts for w in _WORD.findall(t.lower())]


def ttr(texts: Sequence[str]) -> float:
    """Type-token ratio: unique lower-cased word tokens / word tokens, over the subset's concatenated text."""
    words = _words(texts)
    if not words:
        raise InputError("the subset's texts contain no word tokens")
    return len(set(words)) / len(words)


def vocd_d(texts: Sequence[str], ntokens: int = 50, within_sample: int = 100, iterations: int = 3,
           seed: int = 42) -> float:
    """vocd-D (McKee, Malvern & Richards 2000): the D that best fits TTR(k) = (D/k)[(1 + 2k/D)^0.5 - 1] to
    the mean TTR of random k-token samples, k = 35..ntokens; computed by the ``lexicalrichness`` package, with
    its tokenisation (lower-cased; punctuation and digits removed, so ``w1`` and ``w2`` are one word)."""
    from lexicalrichness import LexicalRichness

    lex = LexicalRichness(" ".join(texts))
    if lex.words <= ntokens:
        raise InputError(f"vocd_d needs more than ntokens={ntokens} words; the subset has {lex.words}")
    return float(lex.vocd(ntokens=ntokens, within_sample=within_sample, iterations=iterations, seed=seed))


def distsum_l2(embeddings: np.ndarray, block_size: int = 2048) -> float:
    """Mean L2 distance over all ordered pairs i != j (raw embeddings, not normalised)."""
    x = torch.as_tensor(as_embeddings(embeddings, min_rows=2, cosine=False))
    total = sum(float(torch.cdist(x[s:s + block_size], x).double().sum()) for s in range(0, len(x), block_size))
    return total / (len(x) * (len(x) - 1))


def knn_distance(embeddings: np.ndarray, k: int = 10) -> float:
    """Mean cosine distance from each sample to its k nearest *other* samples of the subset (exact, faiss)."""
    unit = _unit(embeddings).astype(np.float32)
    k = check_positive_int(k, "k")
    if len(unit) < k + 1:
        raise InputError(f"knn_distance with k={k} needs at least {k + 1} rows, got {len(unit)}")
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    sims, idx = index.search(unit, k + 1)
    own = idx == np.arange(len(unit))[:, None]
    # drop each row's own hit (or, when a duplicate outranked it, the last hit)
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(unit)), drop] = False
    return float(np.mean(1.0 - sims[keep].reshape(len(unit), k)))


def vendi(embeddings: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine kernel: exp(-sum_i l_i log l_i), l the eigenvalues
    of K/N. Uses the D x D dual X^T X / N when N > D (same non-zero eigenvalues)."""
    unit = _unit(embeddings)
    n = len(unit)
    gram = unit.T @ unit / n if n > unit.shape[1] else unit @ unit.T / n
    lam = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    lam = lam[lam > 1e-12]
    return float(np.exp(-np.sum(lam * np.log(lam))))


def facility_location(embeddings: np.ndarray, reference: np.ndarray, block_size: int = 4096) -> float:
    """sum over reference rows r of max over subset rows s of cos(r, s) (the objective QDIT optimises,
    Bukharin et al. 2024)."""
    sub, ref = _unit(embeddings).astype(np.float32), _unit32(reference)
    check_same_dim(sub, ref)
    return float(sum((ref[s:s + block_size] @ sub.T).max(axis=1).astype(np.float64).sum()
                     for s in range(0, len(ref), block_size)))


def cluster_inertia(embeddings: np.ndarray, n_clusters: int = 10, seed: int = 0, n_init: int = 3) -> float:
    """k-means inertia of the subset: sum of squared distances to the nearest centroid (scikit-learn KMeans)."""
    from sklearn.cluster import KMeans

    x = as_embeddings(embeddings, cosine=False)
    if len(x) < n_clusters:
        raise InputError(f"cluster_inertia with n_clusters={n_clusters} needs at least that many rows")
    return float(KMeans(n_clusters, n_init=n_init, random_state=seed).fit(x.astype(np.float64)).inertia_)


def radius(embeddings: np.ndarray) -> float:
    """Geometric mean over dimensions of the per-dimension standard deviation (Lai et al. 2020)."""
    std = as_embeddings(embeddings, min_rows=2, cosine=False).astype(np.float64).std(axis=0)
    if (std == 0).any():
        return 0.0
    return float(np.exp(np.mean(np.log(std))))


def log_determinant(embeddings: np.ndarray, ridge: float = 1e-3) -> float:
    """log det(K + ridge * I_N) of the subset's cosine-similarity kernel K = X X^T (a DPP-style volume).

    When N > D, Sylvester's identity gives it from the D x D Gram matrix:
    log det(X X^T + r I_N) = log det(X^T X + r I_D) + (N - D) log r.
    """
    unit = _unit(embeddings)
    n, d = unit.shape
    if n > d and ridge > 0:
        sign, logdet = np.linalg.slogdet(unit.T @ unit + ridge * np.eye(d))
        logdet += (n - d) * np.log(ridge)
    else:
        sign, logdet = np.linalg.slogdet(unit @ unit.T + ridge * np.eye(n))
    if sign <= 0:
        raise InputError(f"log_determinant: the kernel is not positive definite; raise ridge (now {ridge})")
    return float(logdet)


def partition_kmeans(reference: np.ndarray, n_clusters: int = 100, seed: int = 42) -> Clustering:
    """The NovelSum authors' ``entropy.py`` (``kmeans_entropy``) fit: ``faiss.Kmeans(d, n_clusters, niter=20,
    seed=42)`` on the raw (not normalised) reference rows, with faiss' own defaults (it trains on at most 256 rows
    per centroid, sampled with the seed); each reference row labelled with its nearest centroid (L2)."""
    ref = as_embeddings(reference, "reference", cosine=False)
    n_clusters = check_positive_int(n_clusters, "n_clusters")
    if len(ref) < n_clusters:
        raise InputError(f"partition_entropy: the reference has {len(ref)} rows, fewer than n_clusters={n_clusters}")
    km = faiss.Kmeans(ref.shape[1], n_clusters, niter=20, verbose=False, seed=int(seed))
    km.train(ref)
    _, ids = km.index.search(ref, 1)
    return Clustering(km.centroids.copy(), ids[:, 0], spherical=False)


def label_entropy(labels: np.ndarray, n_clusters: int) -> float:
    """Entropy (log2) of the shares of ``labels`` (cluster ids in 0..n_clusters-1).

    >>> label_entropy(np.array([0, 0, 1, 2]), 4)
    1.5
    """
    p = np.bincount(np.asarray(labels), minlength=n_clusters) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def partition_entropy(embeddings: np.ndarray, reference: np.ndarray, n_clusters: int = 100,
                      seed: int = 42) -> float:
    """Entropy (log2) of the subset's shares over k-means clusters fitted on the reference pool
    (:func:`partition_kmeans`); each subset row goes to its nearest centroid (L2). The study reads the fit from
    the pool signals (metrics.signals) instead of refitting it per subset."""
    sub = as_embeddings(embeddings, cosine=False)
    check_same_dim(sub, as_embeddings(reference, "reference", cosine=False))
    return label_entropy(partition_kmeans(reference, n_clusters, seed).assign(sub), n_clusters)
