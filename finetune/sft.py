"""Fine-tuning: TRL ``SFTTrainer`` with optional PEFT LoRA, loss on assistant tokens only.

TRL's own ``assistant_only_loss`` needs ``{% generation %}`` markers in the chat template, which few models
ship (SmolLM2 does not). So conversations are tokenised here, once, with an assistant mask derived from the
chat template itself (the character span each assistant turn adds to the rendered text), and handed to the
trainer pre-tokenised with an ``assistant_masks`` column, which TRL folds into the labels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from divcore.io import atomic_write
from finetune.models import load_tokenizer
from metrics.validation import InputError

log = logging.getLogger(__name__)

LOG_HISTORY = "log_history.json"  # the trainer's log history, saved beside the adapter / model


def assistant_spans(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> tuple[str, list[tuple]]:
    """The rendered conversation and the character spans of its assistant turns (end-of-turn included)."""
    text = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        if i == 0:
            raise InputError("a conversation starts with an assistant turn, which has no prompt to train on")
        start = len(tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        upto = tok.apply_chat_template(messages[:i + 1], tokenize=False)
        if not text.startswith(upto):
            raise InputError("the chat template does not render conversations prefix by prefix, so assistant "
                             "tokens cannot be located; use a template with {% generation %} markers")
        spans.append((start, len(upto)))
    return text, spans


def tokenize_with_assistant_mask(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                                 max_length: int) -> dict[str, list[int]]:
    text, spans = assistant_spans(tok, messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length)
    mask = [int(any(s <= a and b <= e and b > a for s, e in spans)) for a, b in enc["offset_mapping"]]
    return {"input_ids": enc["input_ids"], "assistant_masks": mask}


def build_dataset(tok: PreTrainedTokenizerBase, conversations: list[dict[str, Any]], max_length: int) -> Dataset:
    rows = [tokenize_with_assistant_mask(tok, c["messages"], max_length) for c in conversations]
    kept = [r for r in rows if any(r["assistant_masks"])]
    if len(kept) < len(rows):
        log.warning("%d of %d training conversations have no assistant token within max_length=%d; dropped",
                    len(rows) - len(kept), len(rows), max_length)
    if not kept:
        raise InputError(f"no training conversation has an assistant token within max_length={max_length}; "
                         "raise finetune.max_length")
    return Dataset.from_list(kept)


def last_checkpoint(checkpoint_dir: str | Path | None) -> str | None:
    """The newest ``checkpoint-<step>`` the trainer left in ``checkpoint_dir``, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    return get_last_checkpoint(str(checkpoint_dir))


def check_finetune_config(cfg: dict[str, Any]) -> None:
    """Before any work: ``max_length`` a positive integer, ``args`` only SFTConfig fields, ``lora`` only LoraConfig
    fields (a key TRL or transformers dropped, e.g. ``warmup_ratio`` in transformers 5, fails here, not after the
    pool is embedded)."""
    from dataclasses import fields

    from peft import LoraConfig
    from trl import SFTConfig

    length = cfg.get("max_length")
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise InputError(f"finetune.max_length must be a positive integer, got {length!r}")
    for key, known in (("args", SFTConfig), ("lora", LoraConfig)):
        names = {f.name for f in fields(known)}
        unknown = sorted(set(cfg.get(key) or {}) - names)
        if unknown:
            raise InputError(f"finetune.{key}: {unknown} are not {known.__name__} fields; check the spelling "
                             f"(trl / peft documentation lists the fields of {known.__name__})")


def train_sft(conversations: list[dict[str, Any]], model_path: str, output_dir: str | Path,
              cfg: dict[str, Any], checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune ``model_path`` on ``conversations``; saves the adapter (or full model) to ``output_dir``, with
    the trainer's log history (loss, learning rate, grad norm per logging step) in ``log_history.json``.

    ``cfg`` holds ``max_length``, ``lora`` (a PEFT LoraConfig dict, or null for full fine-tuning),
    ``chat_template`` (optional, see :mod:`finetune.templates`) and ``args`` (any ``SFTConfig`` field: epochs,
    learning rate, batch size, bf16, gradient checkpointing, save_steps, ...). With ``checkpoint_dir`` the
    trainer checkpoints there and resumes from the newest checkpoint it finds (a run killed mid-training).
    """
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from finetune.templates import set_chat_template

    torch.manual_seed(int(cfg["args"].get("seed", 42)))
    tok = load_tokenizer(model_path)
    set_chat_template(tok, cfg.get("chat_template"))
    dataset = build_dataset(tok, conversations, int(cfg["max_length"]))
    defaults = {"report_to": [], "save_strategy": "no" if checkpoint_dir is None else "steps"}
    args = SFTConfig(output_dir=str(checkpoint_dir or output_dir), max_length=int(cfg["max_length"]),
                     **(defaults | dict(cfg["args"])))
    peft_config = LoraConfig(**cfg["lora"]) if cfg.get("lora") else None
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=dataset, processing_class=tok,
                         peft_config=peft_config)
    resume = last_checkpoint(checkpoint_dir)
    if resume:
        log.info("resuming fine-tuning from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        tok.save_pretrained(str(output_dir))
        # the loss curve stays with the model, with or without W&B (one entry per logging_steps)
        atomic_write(Path(output_dir) / LOG_HISTORY, json.dumps(trainer.state.log_history, indent=1))
    return {"train_loss": float(result.training_loss), "train_samples": len(dataset),
            "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)), "global_step": result.global_step,
            "resumed_from": Path(resume).name if resume else None}
