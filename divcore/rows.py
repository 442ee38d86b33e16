"""Row normalisation of embedding matrices (cosine geometry everywhere in the project)."""

from __future__ import annotations

import numpy as np


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with every row divided by its Euclidean norm, in ``x``'s dtype: ``x_i / ||x_i||_2``.

    Callers validate first (``metrics.validation.as_embeddings`` rejects all-zero rows).

    >>> normalize_rows(np.array([[3.0, 4.0], [0.0, 2.0]])).tolist()
    [[0.6, 0.8], [0.0, 1.0]]
    """
    return x / np.linalg.norm(x, axis=1, keepdims=True)
