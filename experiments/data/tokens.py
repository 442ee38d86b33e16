"""Supervised tokens per conversation: the loss-bearing assistant tokens a fine-tune trains on.

``t_i`` = the number of tokens of conversation i that carry loss under a fine-tune: rendered with the tokenizer's
chat template (or ``chat_template``), cut at ``max_length``, assistant tokens only (:func:`finetune.sft.
tokenize_with_assistant_mask`, the trainer's own tokenisation). A subset's total ``sum_i t_i`` (repeats counted) is
how much training signal it carries: the token-matching of :mod:`selection.design` holds it fixed across a study's
subsets, and the report records it as a covariate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from divcore.errors import InputError
from finetune.models import resolve_model
from finetune.sft import supervised_tokens as subset_tokens
from finetune.sft import training_tokenizer

log = logging.getLogger(__name__)


def supervised_tokens(conversations: Sequence[dict], model: str, max_length: int, cache_dir: str | Path,
                      chat_template: str | None = None) -> np.ndarray:
    """``t_i`` (module docstring) for every conversation, under ``model``'s tokenizer (a model spec,
    :func:`finetune.models.resolve_model`) and template, cut at ``max_length``: per row what
    :func:`finetune.sft.supervised_tokens` (the runs.csv column) totals over a subset."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise InputError(f"supervised tokens: max_length must be a positive integer, got {max_length!r}")
    tok = training_tokenizer(resolve_model(model, cache_dir), chat_template)
    counts = [subset_tokens(tok, [c], max_length) for c in tqdm(conversations, desc="supervised tokens")]
    return np.asarray(counts, dtype=np.int64)
