"""Offline performance signal: likelihood of AlpacaEval's GPT-4 Turbo reference answers.

performance = -(sum of assistant-token NLL) / (number of assistant tokens), over a fixed seeded sample of the
805 AlpacaEval instructions, each rendered with the fine-tuned model's chat template. Higher is better. It
needs no judge and no network, so it is the embedded default; it is registered as an evaluator beside the
judge-based AlpacaEval / MT-Bench in :mod:`eval.benchmarks`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from divcore.errors import InputError
from finetune.models import load_causal_lm, load_tokenizer
from finetune.sft import tokenize_with_assistant_mask

log = logging.getLogger(__name__)


def read_reference(path: str | Path) -> list[dict[str, str]]:
    """Every row of an AlpacaEval reference file (``instruction``, ``output``, ...), validated."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"AlpacaEval reference file {path} not found: run `divbench-data fetch` (needs "
                         "internet), set DIVBENCH_DATA to a directory holding alpaca_eval/, or set eval.reference_path")
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not rows or not all({"instruction", "output"} <= set(r) for r in rows):
        raise InputError(f"{path}: expected a JSON list of records with 'instruction' and 'output'")
    return rows


def sample_positions(n_rows: int, n: int | None, seed: int) -> list[int]:
    """A seeded sample of ``n`` of ``n_rows`` positions, in ascending order (all of them when n is None)."""
    if n is None or n >= n_rows:
        return list(range(n_rows))
    return [int(i) for i in np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))]


def load_reference(path: str | Path, n: int | None, seed: int) -> list[dict[str, str]]:
    """A seeded sample of ``n`` (instruction, output) rows of an AlpacaEval reference file, in file order."""
    rows = read_reference(path)
    return [rows[i] for i in sample_positions(len(rows), n, seed)]


@torch.inference_mode()
def example_nlls(model: Any, tok: Any, examples: list[dict[str, str]], *, max_length: int = 512,
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per reference answer: (sum of its assistant-token NLL, its number of assistant tokens), each example
    rendered with ``tok``'s chat template exactly as in training (``tokenize_with_assistant_mask``)."""
    sums, counts = np.zeros(len(examples)), np.zeros(len(examples), dtype=np.int64)
    for i, ex in enumerate(tqdm(examples, desc="reference NLL")):
        messages = [{"role": "user", "content": ex["instruction"]}, {"role": "assistant", "content": ex["output"]}]
        enc = tokenize_with_assistant_mask(tok, messages, max_length)
        ids = torch.tensor([enc["input_ids"]], device=device)
        labels = ids.clone()
        labels[0, torch.tensor(enc["assistant_masks"], device=device) == 0] = -100
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                ignore_index=-100, reduction="sum")
        sums[i], counts[i] = float(nll), int((target != -100).sum())
    return sums, counts


def reference_nll(model_path: str, examples: list[dict[str, str]], *, adapter: str | None = None,
                  max_length: int = 512, device: str = "cpu") -> dict[str, Any]:
    tok = load_tokenizer(adapter or model_path)
    model = load_causal_lm(model_path, adapter=adapter, device=device)
    sums, counts = example_nlls(model, tok, examples, max_length=max_length, device=device)
    total, count = 0.0, int(counts.sum())
    for s in sums:  # accumulated in example order, as before: the cached numbers stay bit for bit
        total += float(s)
    if count == 0:
        raise InputError(f"no reference-answer token fits in eval.max_length={max_length}; raise it")
    mean = total / count
    return {"performance": -mean, "reference_nll": mean, "n_examples": len(examples), "n_tokens": count}
