"""Input checks shared by every metric and selector: one place that says what is wrong and how to fix it."""

from __future__ import annotations

import numpy as np

from divcore.errors import InputError

__all__ = ["InputError", "as_embeddings", "check_nonnegative", "check_positive_int", "check_same_dim"]


def as_embeddings(x: object, name: str = "embeddings", *, min_rows: int = 1, cosine: bool = True) -> np.ndarray:
    """Return ``x`` as a finite, C-contiguous float32 ``(N, D)`` array or raise :class:`InputError`.

    ``cosine=True`` also rejects all-zero rows, whose cosine similarity is undefined.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D (rows, dims) array, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise InputError(f"{name} has {arr.shape[0]} rows; at least {min_rows} are needed")
    if arr.shape[1] == 0:
        raise InputError(f"{name} has 0 dimensions")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name} must be real numbers (float or int), got dtype {arr.dtype}; a complex array "
                         "is not measured on its real part")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise InputError(f"{name} has NaN or inf values in {int(bad.sum())} rows (first: {rows}); "
                         "re-embed those rows or drop them from the pool")
    if cosine:
        zero = ~arr.any(axis=1)
        if zero.any():
            rows = np.flatnonzero(zero)[:5].tolist()
            raise InputError(f"{name} has {int(zero.sum())} all-zero rows (first: {rows}); their cosine "
                             "distance is undefined: drop them or check the embedding step")
    return arr


def check_same_dim(a: np.ndarray, b: np.ndarray, a_name: str = "embeddings", b_name: str = "reference") -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(f"{a_name} has dimension {a.shape[1]} but {b_name} has {b.shape[1]}; "
                         "embed both with the same model")


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_nonnegative(value: object, name: str) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(out) or out < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return out
