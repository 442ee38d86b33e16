"""Embedding stage: text -> L2-normalised vectors, by one of three backends.

* ``hf_causal``: last-token hidden state of a causal LM through transformers (the authors' vLLM default for
  LLM embeddings, reproduced on the CPU). Inputs are cut to ``max_length`` tokens of the model's tokenizer.
* ``sentence_transformers``: a sentence embedder with its own pooling (all-MiniLM-L6-v2 by default).
* ``vllm``: ``LLM(task="embed")`` on a GPU box, exactly the authors' path; only needs vLLM installed.
* ``precomputed``: vectors someone already computed (the authors' numbered-JSON directory, their released 396k pool,
  or a ``.npy``), read from ``embed.path`` and kept exactly as given: no re-normalisation, pool order, row count and
  dimension checked against the pool (:func:`precomputed_embeddings`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from divcore.rows import normalize_rows
from finetune.models import load_causal_lm, load_tokenizer
from metrics.validation import InputError

log = logging.getLogger(__name__)
BACKENDS = ("hf_causal", "sentence_transformers", "vllm", "precomputed")
# Pool options under which row i of the pool may not be row i of the source files, so precomputed vectors
# would silently belong to other conversations: refused with embed=precomputed.
ROW_CHANGING = {"size": None, "max_prompt_chars": None}


@torch.inference_mode()
def embed_last_token(texts: Sequence[str], model_path: str, *, max_length: int = 256, batch_size: int = 8,
                     device: str = "cpu") -> np.ndarray:
    tok = load_tokenizer(model_path)
    tok.padding_side = "right"
    model = load_causal_lm(model_path, device=device)
    order = np.argsort([len(t) for t in texts])[::-1]  # similar lengths per batch: less padding
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc="embed (last token)"):
        rows = order[start:start + batch_size]
        enc = tok([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                  return_tensors="pt").to(device)
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
        last = enc["attention_mask"].sum(dim=1) - 1
        vec = hidden[torch.arange(len(rows), device=device), last]
        out[rows] = torch.nn.functional.normalize(vec.float(), dim=1).cpu().numpy()
    return out


def embed_sentence_transformers(texts: Sequence[str], model_path: str, *, max_length: int = 256,
                                batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(model_path, device=device)
    model.max_seq_length = max_length
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=True,
                        convert_to_numpy=True).astype(np.float32)


def embed_vllm(texts: Sequence[str], model_path: str, *, max_length: int = 256, **_: object) -> np.ndarray:
    try:
        from vllm import LLM
    except ImportError:
        raise InputError("embed.backend=vllm needs vLLM (GPU): pip install -e '.[gpu]'") from None
    tok = load_tokenizer(model_path)
    cut = [tok.decode(tok(t)["input_ids"][:max_length], skip_special_tokens=True) for t in texts]
    llm = LLM(model=model_path, task="embed", enforce_eager=True)
    vecs = np.asarray([o.outputs.embedding for o in llm.embed(cut)], dtype=np.float32)
    return normalize_rows(vecs)


def check_rows_kept(pool_cfg: dict, purpose: str) -> None:
    """Refuse pool options that drop or reorder rows when vector i must stay aligned with source record i."""
    bad = [f"pool.{k}={pool_cfg.get(k)}" for k, keep in ROW_CHANGING.items() if pool_cfg.get(k) != keep]
    if pool_cfg.get("on_invalid") == "skip":
        bad.append("pool.on_invalid=skip")
    if pool_cfg.get("format") == "hub" and any(s.get("limit") is not None for s in pool_cfg.get("sources") or []):
        bad.append("pool.sources[*].limit")
    if bad:
        raise InputError(f"{purpose} needs the pool's rows exactly as in the source files, in order; "
                         f"{', '.join(bad)} would drop or reorder rows. Remove those options (pool.size=null, "
                         "pool.max_prompt_chars=null, pool.on_invalid=error)")


def check_precomputed(pool_cfg: dict, embed_cfg: dict) -> None:
    """embed=precomputed: a path, and a pool whose row i is source record i."""
    if not embed_cfg.get("path"):
        raise InputError("embed=precomputed needs embed.path: the authors' numbered-JSON embedding directory, "
                         "a .json list of vectors or a .npy file")
    check_rows_kept(pool_cfg, "embed=precomputed")


def precomputed_embeddings(path: str, n_rows: int, pool_path: str | None = None, dim: int | None = None) -> np.ndarray:
    """Read vectors from ``path`` (authors' numbered-JSON directory, ``.json`` or ``.npy``) for a pool of
    ``n_rows`` rows (of dimension ``dim`` when given), unchanged: no re-normalisation, since NovelSum's density
    reads the raw norms.

    When both ``path`` and the pool's ``pool_path`` are directories (the authors' split layout), every text file
    must have an embedding file of the same name and row count. JSON values come back as float32: the authors'
    vectors are vLLM float32 outputs, so the float32 round trip is exact; a ``.npy`` keeps its own dtype.
    """
    from experiments.embedding_sets import check_paired_layout, load_matrix

    if pool_path is not None and Path(path).is_dir() and Path(pool_path).is_dir():
        check_paired_layout(Path(pool_path), Path(path))
    vecs = load_matrix(path)
    if vecs.ndim != 2 or vecs.shape[1] == 0:
        raise InputError(f"embed.path {path}: expected a 2-D (rows, dimension) matrix, got shape {vecs.shape}")
    if vecs.shape[0] != n_rows:
        raise InputError(f"embed.path {path} holds {vecs.shape[0]} vectors but the pool has {n_rows} rows: the "
                         "embeddings must be those of this pool's records, one per record, in the same order")
    if dim is not None and vecs.shape[1] != int(dim):
        raise InputError(f"embed.path {path} holds {vecs.shape[1]}-dimensional vectors but embed.dim={dim}: point "
                         "embed.path at the intended embeddings or fix embed.dim")
    if not np.isfinite(vecs).all():
        bad = int(np.flatnonzero(~np.isfinite(vecs).all(axis=1))[0])
        raise InputError(f"embed.path {path}: vector {bad} contains NaN or inf")
    return vecs


def embed_texts(texts: Sequence[str], model_path: str, backend: str = "hf_causal", *, max_length: int = 256,
                batch_size: int = 8, device: str = "cpu") -> np.ndarray:
    """Embed ``texts`` with ``backend``; returns a float32 ``(len(texts), D)`` array of unit rows."""
    fns = {"hf_causal": embed_last_token, "sentence_transformers": embed_sentence_transformers,
           "vllm": embed_vllm}
    if backend == "precomputed":
        raise InputError("embed.backend=precomputed reads vectors from embed.path; it does not embed texts")
    if backend not in fns:
        raise InputError(f"unknown embed.backend {backend!r}; use one of {BACKENDS}")
    if not texts:
        raise InputError("nothing to embed: the pool is empty")
    return fns[backend](texts, model_path, max_length=max_length, batch_size=batch_size, device=device)
