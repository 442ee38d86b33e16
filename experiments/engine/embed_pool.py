"""A pool -> its embeddings, the authors' ``embedding.py`` as a command (``divbench-embed``), through the engine.

* ``out=<file>.npy``: one matrix: the engine's pool and embed stages (and their cache), the matrix copied to ``out``.
* ``out=<dir>``: the authors' layout, one JSON list of vectors per pool file with the pool file's name
  (``0.json, 1.json, ...`` for their numbered text directory; ``<stem>.json`` for a single file): each file is a
  pool of its own through the same stages. A file whose output already holds as many vectors as it has records is
  skipped, so a killed run resumes per file (and inside a file, from the embed stage's last finished chunk).

Either way every embed option reaches the encoder as in the study (``embed.runtime.chunk_size``,
``embed.runtime.vllm.*``): the texts are embedded by the embed stage's own build function.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from divcore.errors import InputError
from divcore.io import atomic_write
from experiments.data.embedding_sets import json_record_count
from experiments.data.pools import check_format_config, load_conversations, numbered_json_files
from experiments.embedding.backends import check_embed_config, check_rows_kept
from experiments.engine.pipeline import run

log = logging.getLogger(__name__)


def pool_files(pool_cfg: dict[str, Any]) -> list[Path]:
    """The pool's source files, in the authors' numeric order: the split the output keeps."""
    if not check_format_config(pool_cfg).reads_path or not pool_cfg.get("path"):
        raise InputError(f"pool.format={pool_cfg['format']} has no files to mirror: write one matrix with "
                         "out=<file>.npy")
    path = Path(pool_cfg["path"])
    if not path.exists():
        raise InputError(f"pool.path {path} does not exist")
    files = numbered_json_files(path) if path.is_dir() else [path]
    if not files:
        raise InputError(f"pool directory {path} holds no *.json files")
    return files


def _done(target: Path, n_rows: int) -> bool:
    return target.exists() and json_record_count(target) == n_rows


def embed_to_dir(cfg: dict[str, Any]) -> Path:
    """One output JSON per pool file, each written atomically; finished files are skipped."""
    pool = cfg["pool"]
    check_rows_kept(pool, "divbench-embed out=<dir> (one embedding file per pool file)")
    files = pool_files(pool)
    out = Path(cfg["out"])
    for file in tqdm(files, desc="embed files", unit="file"):
        target = out / f"{file.stem}.json"
        if _done(target, len(load_conversations(file, pool["format"], pool["on_invalid"]))):
            log.info("%s: already embedded, kept", target)
            continue
        vecs = run(cfg | {"pool": pool | {"path": str(file)}}, until="embed").shared["embed"]
        atomic_write(target, json.dumps(vecs.tolist()))
        log.info("%s: %d vectors of dimension %d", target, *vecs.shape)
    return out


def embed_to_npy(cfg: dict[str, Any]) -> Path:
    """The engine's pool and embed stages (cached), then the matrix copied to ``out``."""
    vecs = run(cfg, until="embed").shared["embed"]
    buf = io.BytesIO()
    np.save(buf, vecs)
    atomic_write(cfg["out"], buf.getvalue())
    log.info("%s: %d vectors of dimension %d", cfg["out"], *vecs.shape)
    return Path(cfg["out"])


def embed_pool(cfg: dict[str, Any]) -> Path:
    """``divbench-embed``: a ``.npy`` matrix or the authors' per-file layout, by ``out``."""
    if not check_embed_config(cfg["embed"]).embeds_texts:
        raise InputError(f"divbench-embed computes embeddings; embed={cfg['embed']['backend']} only reads them "
                         "(choose embed=smollm2, minilm or vllm)")
    return embed_to_npy(cfg) if str(cfg["out"]).endswith(".npy") else embed_to_dir(cfg)
