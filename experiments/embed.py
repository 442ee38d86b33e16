"""Embedding stage: text -> L2-normalised vectors, by one of three backends.

* ``hf_causal``: last-token hidden state of a causal LM through transformers (the authors' vLLM default for
  LLM embeddings, reproduced on the CPU). Inputs are cut to ``max_length`` tokens of the model's tokenizer.
* ``sentence_transformers``: a sentence embedder with its own pooling (all-MiniLM-L6-v2 by default).
* ``vllm``: ``LLM(task="embed")`` on a GPU box, exactly the authors' path; only needs vLLM installed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from divcore.rows import normalize_rows
from finetune.models import load_causal_lm, load_tokenizer
from metrics.validation import InputError

log = logging.getLogger(__name__)
BACKENDS = ("hf_causal", "sentence_transformers", "vllm")


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


def embed_texts(texts: Sequence[str], model_path: str, backend: str = "hf_causal", *, max_length: int = 256,
                batch_size: int = 8, device: str = "cpu") -> np.ndarray:
    """Embed ``texts`` with ``backend``; returns a float32 ``(len(texts), D)`` array of unit rows."""
    fns = {"hf_causal": embed_last_token, "sentence_transformers": embed_sentence_transformers,
           "vllm": embed_vllm}
    if backend not in fns:
        raise InputError(f"unknown embed.backend {backend!r}; use one of {BACKENDS}")
    if not texts:
        raise InputError("nothing to embed: the pool is empty")
    return fns[backend](texts, model_path, max_length=max_length, batch_size=batch_size, device=device)
