"""Offline performance signal: likelihood of AlpacaEval's GPT-4 Turbo reference answers.

performance = -(sum of assistant-token NLL) / (number of assistant tokens), over a fixed seeded sample of the
805 AlpacaEval instructions, each rendered with the fine-tuned model's chat template. Higher is better. It
needs no judge and no network, so it is the embedded default; it is registered as an evaluator beside the
judge-based AlpacaEval / MT-Bench in :mod:`eval.benchmarks`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from divcore.errors import InputError
from finetune.models import load_causal_lm, load_tokenizer
from finetune.precision import TORCH_DTYPES
from finetune.sft import tokenize_with_assistant_mask

log = logging.getLogger(__name__)


def read_reference(path: str | Path, key: str = "eval.reference_path") -> list[dict[str, str]]:
    """Every row of an AlpacaEval reference file (``instruction``, ``output``, ...), validated. ``key`` is the
    composed config's key that names the file (``eval.alpaca_eval.reference_path`` in the judged suite)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"AlpacaEval reference file {path} not found: run `divbench-data fetch` (needs "
                         f"internet), set DIVBENCH_DATA to a directory holding alpaca_eval/, or set {key}=<file>")
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not rows or not all({"instruction", "output"} <= set(r) for r in rows):
        raise InputError(f"{path}: expected a JSON list of records with 'instruction' and 'output'")
    return rows


def sample_positions(n_rows: int, n: int | None, seed: int) -> list[int]:
    """A seeded sample of ``n`` of ``n_rows`` positions, in ascending order (all of them when n is None)."""
    if n is None or n >= n_rows:
        return list(range(n_rows))
    return [int(i) for i in np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))]


def load_reference(path: str | Path, n: int | None, seed: int, key: str = "eval.reference_path"
                   ) -> list[dict[str, str]]:
    """A seeded sample of ``n`` (instruction, output) rows of an AlpacaEval reference file, in file order."""
    rows = read_reference(path, key)
    return [rows[i] for i in sample_positions(len(rows), n, seed)]


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Positions grouped by equal token length, longest first, in chunks of at most ``batch_size``.

    Rows of one length need no padding and no attention mask, so each row is computed exactly as it would be alone:
    batching changes the speed (larger matrix products), not one bit of the scores."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[n].append(i)
    return [idx[s:s + batch_size] for n in sorted(groups, reverse=True) for idx in [groups[n]]
            for s in range(0, len(idx), batch_size)]


def scored_nll(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> tuple[float, int]:
    """(sum of NLL, number of scored tokens) of one row, from the float32 ``logits`` of the positions ``keep`` only.

    The value is ``cross_entropy(full_logits, target, ignore_index=-100, reduction="sum")`` over the row's ``L - 1``
    predicting positions, bit for bit: log-softmax is computed row by row, and the picked log-probabilities are
    summed by ``nll_loss`` in the same positions as over the full logits (its cascade sum depends on where each
    term sits, not on the rows it ignores)."""
    picked = torch.zeros(target.shape[0], 1, dtype=logits.dtype, device=logits.device)
    rows = target[keep] != -100
    logp = torch.log_softmax(logits[rows], dim=-1)
    picked[keep[rows], 0] = logp.gather(1, target[keep][rows].unsqueeze(1)).squeeze(1)
    nll = torch.nn.functional.nll_loss(picked, torch.where(target == -100, -100, 0), ignore_index=-100,
                                       reduction="sum")
    return float(nll), int(rows.sum())


@torch.inference_mode()
def example_nlls(model: Any, tok: Any, examples: list[dict[str, str]] | list[list[dict[str, str]]], *,
                 max_length: int = 512, device: str = "cpu", batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per reference answer: (sum of its assistant-token NLL, its number of assistant tokens), each example
    rendered with ``tok``'s chat template exactly as in training (``tokenize_with_assistant_mask``). An example is
    an (``instruction``, ``output``) record or a whole conversation (a message list: every assistant turn scored).

    Answers of equal token length run as one batch of up to ``batch_size`` (:func:`length_batches`; answers cut at
    ``max_length`` share that length), and the LM head runs only on positions whose next token is scored
    (``logits_to_keep``): the per-answer sums are those of scoring each answer alone over its full logits."""
    encs = [tokenize_with_assistant_mask(tok, ex if isinstance(ex, list) else [
        {"role": "user", "content": ex["instruction"]}, {"role": "assistant", "content": ex["output"]}], max_length)
            for ex in examples]
    sums, counts = np.zeros(len(examples)), np.zeros(len(examples), dtype=np.int64)
    batches = length_batches([len(e["input_ids"]) for e in encs], batch_size)
    with tqdm(total=len(examples), desc="reference NLL") as bar:
        for batch in batches:
            ids = torch.tensor([encs[i]["input_ids"] for i in batch], device=device)
            mask = torch.tensor([encs[i]["assistant_masks"] for i in batch], device=device)
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # position t predicts token t + 1
            keep = (target != -100).any(0).nonzero().flatten()
            if keep.numel():
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits.float()
                for row, i in enumerate(batch):
                    sums[i], counts[i] = scored_nll(logits[row], target[row], keep)
            bar.update(len(batch))
    return sums, counts


def reference_nll(model_path: str, examples: list[dict[str, str]], *, adapter: str | None = None,
                  max_length: int = 512, device: str = "cpu", precision: str = "fp32",
                  batch_size: int = 8) -> dict[str, Any]:
    """-mean assistant-token NLL of ``examples`` under the model (``precision``: ``fp32`` or ``bf16``, resolved,
    finetune.precision; ``batch_size``: answers of equal length scored together, a runtime knob)."""
    tok = load_tokenizer(adapter or model_path)
    model = load_causal_lm(model_path, adapter=adapter, device=device, dtype=TORCH_DTYPES[precision],
                           merge=precision == "fp32")
    sums, counts = example_nlls(model, tok, examples, max_length=max_length, device=device, batch_size=batch_size)
    total, count = 0.0, int(counts.sum())
    for s in sums:  # accumulated in example order, as before: the cached numbers stay bit for bit
        total += float(s)
    if count == 0:
        raise InputError(f"no reference-answer token fits in eval.max_length={max_length}; raise it")
    mean = total / count
    return {"performance": -mean, "reference_nll": mean, "n_examples": len(examples), "n_tokens": count,
            "eval_precision": precision}
