"""Fine-tuning and evaluation on a tiny model: the assistant mask, a real TRL/PEFT step, reference NLL."""

from __future__ import annotations

import json

import pytest
import torch

from divcore.errors import InputError
from eval.reference_nll import load_reference, reference_nll
from finetune.models import load_tokenizer
from finetune.sft import tokenize_with_assistant_mask, train_sft

CONVS = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                       {"role": "assistant", "content": f"Answer number {i}."},
                       {"role": "user", "content": "And then?"},
                       {"role": "assistant", "content": "Then we stop."}]} for i in range(4)]


@pytest.mark.slow
def test_assistant_mask_covers_exactly_the_assistant_turns(tiny_model):
    tok = load_tokenizer(tiny_model)
    enc = tokenize_with_assistant_mask(tok, CONVS[0]["messages"], 512)
    masked = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m])
    assert masked == "Answer number 0.<|im_end|>\nThen we stop.<|im_end|>\n"
    cut = tokenize_with_assistant_mask(tok, CONVS[0]["messages"], 10)
    assert len(cut["input_ids"]) == 10


@pytest.mark.slow
def test_lora_sft_step_saves_adapter_and_changes_eval(tiny_model, tmp_path):
    cfg = {"max_length": 64, "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                      "task_type": "CAUSAL_LM"},
           "args": {"max_steps": 2, "learning_rate": 0.05, "per_device_train_batch_size": 2, "seed": 0,
                    "use_cpu": True, "disable_tqdm": True, "logging_steps": 1}}
    stats = train_sft(CONVS, tiny_model, tmp_path / "adapter", cfg)
    assert stats["train_samples"] == 4 and stats["train_loss"] > 0
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    history = json.loads((tmp_path / "adapter" / "log_history.json").read_text())  # the loss curve, kept
    losses = [h for h in history if "loss" in h]
    assert [h["step"] for h in losses] == [1, 2] and all(h["loss"] > 0 for h in losses)
    assert history[-1]["train_loss"] == pytest.approx(stats["train_loss"])
    examples = [{"instruction": "Question 9?", "output": "Answer number 9."}]
    base = reference_nll(tiny_model, examples, max_length=64)
    tuned = reference_nll(tiny_model, examples, adapter=str(tmp_path / "adapter"), max_length=64)
    assert base["n_tokens"] == tuned["n_tokens"] > 0
    assert tuned["performance"] != pytest.approx(base["performance"], abs=1e-6)
    assert tuned["performance"] == -tuned["reference_nll"]


@pytest.mark.slow
def test_full_finetune_step(tiny_model, tmp_path):
    cfg = {"max_length": 64, "lora": None, "args": {"max_steps": 1, "per_device_train_batch_size": 2,
                                                    "use_cpu": True, "disable_tqdm": True}}
    train_sft(CONVS[:2], tiny_model, tmp_path / "full", cfg)
    assert (tmp_path / "full" / "model.safetensors").exists()


@pytest.mark.slow
def test_conversation_without_fitting_answer_is_an_error(tiny_model, tmp_path):
    long = [{"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}]
    with pytest.raises(InputError, match="max_length"):
        train_sft(long, tiny_model, tmp_path / "x", {"max_length": 32, "lora": None, "args": {}})


def test_reference_sample_is_seeded(tmp_path):
    from tests.conftest import SHARED

    path = SHARED / "data" / "alpaca_eval" / "gpt4_1106_preview.json"
    a = load_reference(path, 5, 0)
    assert a == load_reference(path, 5, 0) and a != load_reference(path, 5, 1) and len(a) == 5
    with pytest.raises(InputError, match="not found"):
        load_reference(tmp_path / "missing.json", 5, 0)
    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(InputError, match="instruction"):
        load_reference(tmp_path / "bad.json", 5, 0)


@pytest.mark.slow
def test_named_chat_templates_render_prefix_by_prefix(tiny_model):
    from finetune.templates import set_chat_template

    tok = load_tokenizer(tiny_model)
    # LLaMA-3's tokenizer has its header and end-of-turn markers as single special tokens
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    for name, eot in (("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>")):
        set_chat_template(tok, name)
        enc = tokenize_with_assistant_mask(tok, CONVS[0]["messages"], 512)
        masked = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m])
        assert masked.replace("\n", "") == f"Answer number 0.{eot}Then we stop.{eot}"
        assert tok.eos_token == eot  # generation stops at the template's end of turn
    tok.chat_template = None
    with pytest.raises(InputError, match="finetune.chat_template"):
        set_chat_template(tok, None)


@pytest.mark.slow
def test_killed_fine_tuning_resumes_from_its_last_checkpoint(tiny_model, tmp_path):
    import shutil

    from safetensors.torch import load_file

    cfg = {"max_length": 64, "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                      "task_type": "CAUSAL_LM"},
           "args": {"max_steps": 4, "learning_rate": 0.05, "per_device_train_batch_size": 1, "seed": 0,
                    "use_cpu": True, "disable_tqdm": True, "save_steps": 1}}
    whole = train_sft(CONVS, tiny_model, tmp_path / "a", cfg, checkpoint_dir=tmp_path / "ckpt_a")
    assert whole["resumed_from"] is None and whole["global_step"] == 4
    # a kill after step 2: the later checkpoints and the final model were never written
    shutil.copytree(tmp_path / "ckpt_a", tmp_path / "ckpt_b")
    for step in (3, 4):
        shutil.rmtree(tmp_path / "ckpt_b" / f"checkpoint-{step}")
    resumed = train_sft(CONVS, tiny_model, tmp_path / "b", cfg, checkpoint_dir=tmp_path / "ckpt_b")
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["global_step"] == 4
    a = load_file(tmp_path / "a" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
