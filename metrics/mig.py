"""MIG's information score (Chen et al., "MIG: Automatic Data Selection for Instruction Tuning by Maximizing
Information Gain in Semantic Space", 2025), shared by the ``mig_information`` metric and the ``mig`` selector.

Labels are nodes of a graph whose edge weights are the cosine similarities of the label embeddings, zeroed
below a threshold T. The propagation matrix keeps the diagonal, scales off-diagonal edges by alpha and
normalises each column to sum 1. A sample i with labels L_i and quality s_i contributes
``u_i = (s_i / |L_i|) * onehot(L_i) @ P``; a set D holds the information ``E(D) = sum_l phi(sum_{i in D} u_il)``
with ``phi(x) = (x + 1e-6) ** 0.8``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from divcore.rows import normalize_rows
from metrics.validation import InputError, as_embeddings

PHI_A, PHI_B = 1e-6, 0.8


def phi(x: np.ndarray, a: float = PHI_A, b: float = PHI_B) -> np.ndarray:
    return np.power(x + a, b)


def propagation_matrix(label_vectors: np.ndarray, threshold: float = 0.9, alpha: float = 1.0) -> np.ndarray:
    """Column-normalised propagation matrix of the thresholded cosine label graph."""
    unit = as_embeddings(label_vectors, "label embeddings").astype(np.float64)
    unit = normalize_rows(unit)
    w = unit @ unit.T
    w = np.where(w >= threshold, w, 0.0)
    p = np.where(np.eye(len(w), dtype=bool), w, alpha * w)
    return p / p.sum(axis=0, keepdims=True)


def sample_information(labels: Sequence[Sequence[int]], quality: np.ndarray | None, prop: np.ndarray) -> np.ndarray:
    """Rows u_i = (s_i / |L_i|) * onehot(L_i) @ P; a sample with no label contributes nothing."""
    n_labels = prop.shape[0]
    onehot = np.zeros((len(labels), n_labels))
    for i, labs in enumerate(labels):
        labs = list(labs)
        if any(not 0 <= j < n_labels for j in labs):
            raise InputError(f"sample {i} has a label id outside 0..{n_labels - 1}")
        if labs:
            onehot[i, labs] = 1.0 / len(labs)
    if quality is not None:
        onehot *= np.asarray(quality, dtype=np.float64)[:, None]
    return onehot @ prop


def mig_information(labels: Sequence[Sequence[int]], label_vectors: np.ndarray, quality: np.ndarray | None = None,
                    threshold: float = 0.9, alpha: float = 1.0) -> float:
    """E(D) = sum over labels of phi(sum_i u_i): MIG's information score of a set of samples."""
    prop = propagation_matrix(label_vectors, threshold, alpha)
    return float(phi(sample_information(labels, quality, prop).sum(axis=0)).sum())
