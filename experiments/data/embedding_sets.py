"""Read embedding sets from disk: ``.npy``, a JSON list of vectors, or the NovelSum authors' directory of
numbered JSON files (``0.json``, ``1.json``, ... concatenated in numeric order, without gaps or foreign files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from divcore.errors import InputError
from divcore.io import read_text
from experiments.data.pools import numbered_json_files


def _real_matrix(arr: np.ndarray, path: Path) -> np.ndarray:
    """A real-valued 2-D matrix; complex, boolean, string or object arrays are refused, not coerced."""
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{path}: embeddings must be real numbers (float or int), got dtype {arr.dtype}; "
                         "convert them (e.g. np.abs or .real only if that is what you mean)")
    if arr.ndim != 2:
        raise InputError(f"{path}: embeddings must be a 2-D (rows, dims) array, got shape {arr.shape}")
    return arr


def _finite_rows(arr: np.ndarray, path: Path) -> np.ndarray:
    """Refuse NaN / inf vectors here, where the file is known, rather than deep inside a metric."""
    bad = ~np.isfinite(arr).all(axis=1) if arr.size else np.zeros(len(arr), dtype=bool)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise InputError(f"{path}: NaN or inf in {int(bad.sum())} rows (first: {rows}) of its {len(arr)} vectors; "
                         "re-embed those rows or drop them from this file")
    return arr


def load_matrix(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise InputError(f"embedding file {path} does not exist")
    if path.is_dir():
        files = numbered_json_files(path)
        if not files:
            raise InputError(f"{path} holds no *.json embedding files")
        parts = [load_matrix(f) for f in files]
        for f, part in zip(files, parts, strict=True):
            if part.ndim != 2 or part.shape[1] != parts[0].shape[1]:
                raise InputError(f"{f}: vectors of shape {part.shape[1:]}, but {files[0]} has {parts[0].shape[1:]}; "
                                 "every file must hold vectors of one dimension")
        return np.concatenate(parts)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{path}: not a readable .npy array ({e}); re-save it with numpy.save") from None
        return _finite_rows(_real_matrix(arr, path), path)
    if path.suffix == ".json":
        try:
            arr = _real_matrix(np.asarray(json.loads(read_text(path)), dtype=np.float32), path)
        except InputError:
            raise
        except (json.JSONDecodeError, ValueError, TypeError) as e:
            raise InputError(f"{path}: not a JSON list of equal-length vectors ({e})") from None
        return _finite_rows(arr, path)
    raise InputError(f"{path}: unsupported embedding file type; use .npy, .json or a directory of numbered .json")


def json_record_count(path: Path) -> int:
    """Number of top-level records in a JSON list file."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return len(data)


def check_paired_layout(text_dir: Path, emb_dir: Path) -> None:
    """The authors' split layout: text file ``N.json`` and embedding file ``N.json`` hold the same rows."""
    texts = {f.name: f for f in numbered_json_files(text_dir)}
    embs = {f.name: f for f in numbered_json_files(emb_dir)}
    if texts.keys() != embs.keys():
        only_t, only_e = sorted(texts.keys() - embs.keys()), sorted(embs.keys() - texts.keys())
        raise InputError(f"the text files in {text_dir} and embedding files in {emb_dir} differ: "
                         f"no embeddings for {only_t or 'none'}, no texts for {only_e or 'none'}")
    for name, tfile in texts.items():
        n_text, n_emb = json_record_count(tfile), json_record_count(embs[name])
        if n_text != n_emb:
            raise InputError(f"{tfile} holds {n_text} records but {embs[name]} holds {n_emb} vectors: each "
                             "embedding file must embed its text file row for row")


def load_subsets(path: str | Path) -> dict[str, np.ndarray]:
    """One subset per file of a directory (``*.npy`` / ``*.json``), or a single file as one subset."""
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.npy"), *path.glob("*.json")])
        if not files:
            raise InputError(f"{path} holds no *.npy or *.json subset files")
        stems = [f.stem for f in files]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise InputError(f"{path}: subset name(s) {twice} come from two files each ({twice[0]}.npy and "
                             f"{twice[0]}.json); rename or remove one, every subset needs its own name")
        return {f.stem: load_matrix(f) for f in files}
    return {path.stem: load_matrix(path)}
