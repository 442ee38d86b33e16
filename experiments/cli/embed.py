"""Hydra entry point ``divbench-embed``: a pool -> embeddings, the authors' ``embedding.py`` as a command.

* ``out=<dir>``: the authors' layout, one JSON list of vectors per pool file with the pool file's name
  (``0.json, 1.json, ...`` for their numbered text directory; ``<stem>.json`` for a single file). A file whose
  output already holds as many vectors as it has records is skipped, so a killed run resumes per file.
* ``out=<file>.npy``: one matrix, through the study's pool and embed stages (and their cache).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments.engine.config import CONFIG_DIR

log = logging.getLogger("divbench.embed")


def pool_files(pool_cfg: dict[str, Any]) -> list[Path]:
    """The pool's source files, in the authors' numeric order: the split the output keeps."""
    from divcore.errors import InputError
    from experiments.data.pools import check_format_config, numbered_json_files

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
    from experiments.data.embedding_sets import json_record_count

    return target.exists() and json_record_count(target) == n_rows


def embed_to_dir(cfg: dict[str, Any]) -> Path:
    """One output JSON per pool file, each written atomically; finished files are skipped."""
    from divcore.io import atomic_write
    from experiments.data.pools import embedding_text, load_conversations
    from experiments.embedding.backends import check_rows_kept, embed_texts
    from finetune.models import resolve_model

    pool, emb = cfg["pool"], cfg["embed"]
    check_rows_kept(pool, "divbench-embed out=<dir> (one embedding file per pool file)")
    files = pool_files(pool)
    out = Path(cfg["out"])
    model = None
    for file in tqdm(files, desc="embed files", unit="file"):
        convs = load_conversations(file, pool["format"], pool["on_invalid"])
        target = out / f"{file.stem}.json"
        if _done(target, len(convs)):
            log.info("%s: already embedded, kept", target)
            continue
        model = model or resolve_model(emb["model"], cfg["cache_dir"])
        vecs = embed_texts([embedding_text(c) for c in convs], model, emb["backend"],
                           max_length=int(emb["max_length"]), batch_size=int(emb["batch_size"]), device=emb["device"])
        atomic_write(target, json.dumps(vecs.tolist()))
        log.info("%s: %d vectors of dimension %d", target, *vecs.shape)
    return out


def embed_to_npy(cfg: dict[str, Any]) -> Path:
    """The study's pool and embed stages (cached), then the matrix copied to ``out``."""
    import io

    from divcore.io import atomic_write
    from experiments.engine.pipeline import embed_stage, pool_stage, stage_specs
    from experiments.engine.store import ArtifactStore

    store = ArtifactStore(cfg["cache_dir"])
    specs = stage_specs(cfg)
    vecs = embed_stage(store, specs["embed"], pool_stage(store, specs["pool"], cfg["pool"]), cfg["embed"],
                       cfg["cache_dir"], cfg["pool"].get("path"))
    buf = io.BytesIO()
    np.save(buf, vecs)
    atomic_write(cfg["out"], buf.getvalue())
    log.info("%s: %d vectors of dimension %d", cfg["out"], *vecs.shape)
    return Path(cfg["out"])


def embed_pool(cfg: dict[str, Any]) -> Path:
    from divcore.errors import InputError
    from experiments.embedding.backends import check_embed_config

    if not check_embed_config(cfg["embed"]).embeds_texts:
        raise InputError(f"divbench-embed computes embeddings; embed={cfg['embed']['backend']} only reads them "
                         "(choose embed=smollm2, minilm or vllm)")
    return embed_to_npy(cfg) if str(cfg["out"]).endswith(".npy") else embed_to_dir(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="embed_pool")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard

    guard(lambda: embed_pool(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)))


def main() -> None:
    """``divbench-embed``: secrets and the config are checked before Hydra writes its run folder."""
    from experiments.cli.command import preflight

    preflight("embed_pool")
    _hydra_main()


if __name__ == "__main__":
    main()
