"""A pool -> its embeddings, the authors' ``embedding.py`` as a command (``divbench-embed``), through the engine.

* ``out=<file>.npy``: one matrix: the engine's pool and embed stages (and their cache), the matrix copied to ``out``.
* ``out=<dir>``: the authors' layout, one JSON list of vectors per pool file with the pool file's name
  (``0.json, 1.json, ...`` for their numbered text directory; ``<stem>.json`` for a single file): each file is a
  pool of its own through the same stages. The folder's manifest records each file's provenance (model, settings,
  SHA-256 of its texts); a re-run keeps a finished file only when they match and redoes the rest, logging which
  (and inside a file resumes from the embed stage's last matching chunk). ``out`` may not be the pool, the working
  directory, nor a folder holding files divbench did not write.

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
from divcore.io import atomic_write, check_writable, writing
from divcore.ownership import check_output_dir, check_output_file, owned_files, read_provenance, write_manifest
from experiments.data.pools import check_format_config, embedding_text, load_conversations, numbered_json_files
from experiments.embedding.backends import check_embed_config, check_rows_kept, embedding_identity, redo_reason
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


def embed_to_dir(cfg: dict[str, Any]) -> Path:
    """One output JSON per pool file, each written atomically and recorded in the folder's manifest with its
    provenance (model, settings, SHA-256 of the file's texts); a finished file is kept only when its provenance
    matches, else redone (each decision logged)."""
    pool, emb = cfg["pool"], cfg["embed"]
    files = check_embed_out(cfg)
    out = Path(cfg["out"])
    legacy = [f"{f.stem}.json" for f in files]
    recorded = read_provenance(out)
    kept = 0
    for file in tqdm(files, desc="embed files", unit="file"):
        convs = load_conversations(file, pool["format"], pool["on_invalid"])
        target = out / f"{file.stem}.json"
        wanted = embedding_identity(emb, [embedding_text(c) for c in convs])
        why = redo_reason(recorded.get(target.name), wanted) if target.exists() else None
        if target.exists() and why is None:
            log.info("%s: already embedded by %s from the same text, kept", target, emb["model"])
            kept += 1
            continue
        if why:
            log.warning("%s: %s; embedding it again", target, why)
        vecs = run(cfg | {"pool": pool | {"path": str(file)}}, until="embed").shared["embed"]
        with writing(out, "out"):
            atomic_write(target, json.dumps(vecs.tolist()))
            recorded[target.name] = wanted | {"dim": int(vecs.shape[1])}
            write_manifest(out, owned_files(out, legacy, nested=False) | {target.name}, "embed", recorded)
        log.info("%s: %d vectors of dimension %d", target, *vecs.shape)
    log.info("%s: %d file(s) kept, %d embedded", out, kept, len(files) - kept)
    return out


def check_embed_out(cfg: dict[str, Any]) -> list[Path]:
    """The pool files, once ``out`` passes: writable, not the pool nor the working directory, and holding only
    divbench's files (in a folder from before manifests: only ``<pool file stem>.json``). ``out=*.npy``: not a
    folder, not the pool, and if it exists a ``.npy`` file."""
    pool = cfg["pool"]
    out = Path(cfg["out"])
    if str(out).endswith(".npy"):
        check_output_file(out, "out", inputs={"pool.path": pool.get("path")}, ours=_is_npy, what="embedding matrix")
        return []
    check_rows_kept(pool, "divbench-embed out=<dir> (one embedding file per pool file)")
    files = pool_files(pool)
    check_output_dir(out, legacy=[f"{f.stem}.json" for f in files], inputs={"pool.path": pool.get("path")},
                     what="embedding folder")
    check_writable(out, "out")
    return files


def _is_npy(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            np.lib.format.read_magic(fh)
        return True
    except (OSError, ValueError):
        return False


def embed_to_npy(cfg: dict[str, Any]) -> Path:
    """The engine's pool and embed stages (cached), then the matrix copied to ``out``."""
    check_embed_out(cfg)
    vecs = run(cfg, until="embed").shared["embed"]
    buf = io.BytesIO()
    np.save(buf, vecs)
    with writing(cfg["out"], "out"):
        atomic_write(cfg["out"], buf.getvalue())
    log.info("%s: %d vectors of dimension %d", cfg["out"], *vecs.shape)
    return Path(cfg["out"])


def check_embed_pool_config(cfg: dict[str, Any]) -> None:
    """The backend and ``out``, before Hydra writes anything and before any model loads."""
    if not check_embed_config(cfg["embed"]).embeds_texts:
        raise InputError(f"divbench-embed computes embeddings; embed={cfg['embed']['backend']} only reads them "
                         "(choose embed=smollm2, minilm or vllm)")
    check_embed_out(cfg)


def embed_pool(cfg: dict[str, Any]) -> Path:
    """``divbench-embed``: a ``.npy`` matrix or the authors' per-file layout, by ``out``."""
    check_embed_pool_config(cfg)
    return embed_to_npy(cfg) if str(cfg["out"]).endswith(".npy") else embed_to_dir(cfg)
