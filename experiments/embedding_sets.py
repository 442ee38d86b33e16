"""Read embedding sets from disk: ``.npy``, a JSON list of vectors, or the NovelSum authors' directory of
numbered JSON files (``0.json``, ``1.json``, ... concatenated in numeric order)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.pools import numbered_json_files
from metrics.validation import InputError


def load_matrix(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise InputError(f"embedding file {path} does not exist")
    if path.is_dir():
        files = numbered_json_files(path)
        if not files:
            raise InputError(f"{path} holds no *.json embedding files")
        return np.concatenate([load_matrix(f) for f in files])
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".json":
        try:
            return np.asarray(json.loads(path.read_text()), dtype=np.float32)
        except (json.JSONDecodeError, ValueError) as e:
            raise InputError(f"{path}: not a JSON list of equal-length vectors ({e})") from None
    raise InputError(f"{path}: unsupported embedding file type; use .npy, .json or a directory of numbered .json")


def load_subsets(path: str | Path) -> dict[str, np.ndarray]:
    """One subset per file of a directory (``*.npy`` / ``*.json``), or a single file as one subset."""
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.npy"), *path.glob("*.json")])
        if not files:
            raise InputError(f"{path} holds no *.npy or *.json subset files")
        return {f.stem: load_matrix(f) for f in files}
    return {path.stem: load_matrix(path)}
