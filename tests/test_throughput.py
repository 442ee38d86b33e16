"""The fast paths of CPU fine-tuning and evaluation give the numbers of the slow ones: padding-free batches the padded
ones' loss, no gradient checkpointing the same bits, reference NLL batched by length the per-answer bits, bf16 runs
and says so (tiny model, real TRL / PEFT / transformers code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eval.reference_nll import example_nlls, length_batches, reference_nll
from finetune.models import load_causal_lm, load_tokenizer
from finetune.sft import tokenize_with_assistant_mask, train_sft

# answers of different lengths, so that padded batches carry padding and packed rows several examples
CONVS = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                       {"role": "assistant", "content": "Answer " + "and more " * (3 * i) + "done."}]}
         for i in range(6)]
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "task_type": "CAUSAL_LM"}


def _cfg(**top) -> dict:
    args = {"max_steps": 3, "learning_rate": 0.05, "per_device_train_batch_size": 3, "seed": 0, "use_cpu": True,
            "disable_tqdm": True, "logging_steps": 1, "bf16": False, "activation_checkpointing": False}
    return {"max_length": 64, "lora": dict(LORA), "args": args | top.pop("args", {})} | top


def _train(tiny_model, out, cfg) -> tuple[dict, list[float], dict]:
    stats = train_sft(CONVS, tiny_model, out, cfg)
    losses = [h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    return stats, losses, load_file(out / "adapter_model.safetensors")


@pytest.mark.slow
def test_padding_free_batches_train_as_the_padded_ones(tiny_model, tmp_path):
    padded, padded_losses, a = _train(tiny_model, tmp_path / "padded", _cfg(padding_free=False))
    packed, packed_losses, b = _train(tiny_model, tmp_path / "packed", _cfg(padding_free=True))
    assert not padded["padding_free"] and packed["padding_free"]
    # the same examples per step, each attending only to itself (position_ids restart per example): the loss on
    # assistant tokens is the padded batch's up to float summation order; any attention across examples shows here
    assert packed_losses == pytest.approx(padded_losses, rel=1e-5)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_gradient_checkpointing_changes_no_bit(tiny_model, tmp_path):
    _, losses_on, on = _train(tiny_model, tmp_path / "on", _cfg(args={"activation_checkpointing": True}))
    _, losses_off, off = _train(tiny_model, tmp_path / "off", _cfg())
    assert losses_on == losses_off and all(torch.equal(on[k], off[k]) for k in on)  # why it is a runtime knob


def _nll_alone(model, tok, example: dict, max_length: int) -> tuple[float, int]:
    """The reference NLL as scored before batching: one answer, full logits, one cross-entropy."""
    messages = [{"role": "user", "content": example["instruction"]},
                {"role": "assistant", "content": example["output"]}]
    enc = tokenize_with_assistant_mask(tok, messages, max_length)
    ids = torch.tensor([enc["input_ids"]])
    labels = ids.clone()
    labels[0, torch.tensor(enc["assistant_masks"]) == 0] = -100
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    return float(nll), int((target != -100).sum())


@pytest.mark.slow
def test_reference_nll_batched_by_length_is_the_per_answer_nll_bit_for_bit(tiny_model):
    tok, model = load_tokenizer(tiny_model), load_causal_lm(tiny_model)
    # three answers cut at max_length (one length, one batch), two of another equal length, two of their own
    examples = ([{"instruction": f"Tell me {i}.", "output": "word " * 80} for i in range(3)]
                + [{"instruction": "Hi?", "output": f"Hello {w}."} for w in ("you", "all")]
                + [{"instruction": "Short?", "output": "Yes."}, {"instruction": "Longer question here?",
                                                                  "output": "A somewhat longer answer."}])
    lengths = [len(tokenize_with_assistant_mask(tok, [{"role": "user", "content": e["instruction"]},
                                                      {"role": "assistant", "content": e["output"]}], 48)["input_ids"])
               for e in examples]
    batches = length_batches(lengths, 2)
    assert sorted(i for b in batches for i in b) == list(range(len(examples)))
    assert any(len(b) == 2 for b in batches) and all(len({lengths[i] for i in b}) == 1 for b in batches)
    sums, counts = example_nlls(model, tok, examples, max_length=48, batch_size=2)
    alone = [_nll_alone(model, tok, e, 48) for e in examples]
    assert sums.tolist() == [s for s, _ in alone] and counts.tolist() == [c for _, c in alone]
    one_by_one = example_nlls(model, tok, examples, max_length=48, batch_size=1)
    assert np.array_equal(one_by_one[0], sums)


@pytest.mark.slow
def test_bf16_fine_tuning_and_evaluation_run_and_are_recorded(tiny_model, tmp_path):
    stats, losses, adapter = _train(tiny_model, tmp_path / "bf16", _cfg(precision="bf16", padding_free="auto"))
    assert stats["precision"] == "bf16" and stats["padding_free"]  # auto: padding-free along with bf16
    assert all(t.dtype == torch.float32 for t in adapter.values())  # float32 master weights of the LoRA params
    fp32, fp32_losses, _ = _train(tiny_model, tmp_path / "fp32", _cfg(precision="fp32", padding_free="auto"))
    assert fp32["precision"] == "fp32" and not fp32["padding_free"]
    assert losses == pytest.approx(fp32_losses, rel=0.05)  # same model and data, rounded weights
    examples = [{"instruction": "Question 9?", "output": "Answer and more done."}]
    half = reference_nll(tiny_model, examples, adapter=str(tmp_path / "bf16"), max_length=64, precision="bf16")
    full = reference_nll(tiny_model, examples, adapter=str(tmp_path / "bf16"), max_length=64)
    assert half["eval_precision"] == "bf16" and full["eval_precision"] == "fp32"
    assert half["n_tokens"] == full["n_tokens"] and half["performance"] != full["performance"]
    assert half["performance"] == pytest.approx(full["performance"], rel=0.02)
    scored = load_causal_lm(tiny_model, adapter=str(tmp_path / "bf16"), dtype="bfloat16", merge=False)
    lora = {n: p.dtype for n, p in scored.named_parameters() if "lora_" in n}  # the model trained: adapter unmerged
    assert lora and set(lora.values()) == {torch.float32}
    assert {p.dtype for n, p in scored.named_parameters() if "lora_" not in n} == {torch.bfloat16}


@pytest.mark.slow
def test_a_reused_base_model_trains_and_scores_as_a_fresh_load(tiny_model, tmp_path):
    from finetune.models import MODELS

    examples = [{"instruction": "Question 9?", "output": "Answer and more done."}]
    MODELS.clear()
    with MODELS.disabled():  # every model loaded afresh, as before the cache existed
        _, fresh_losses, fresh = _train(tiny_model, tmp_path / "fresh", _cfg())
        fresh_nll = reference_nll(tiny_model, examples, adapter=str(tmp_path / "fresh"), max_length=64)
        loaded = load_causal_lm(tiny_model).state_dict()
    loads = MODELS.loads
    runs = [_train(tiny_model, tmp_path / f"reused{i}", _cfg()) for i in range(2)]  # the 2nd borrows the 1st's base
    assert MODELS.loads == loads + 1
    for _, losses, adapter in runs:  # a fresh LoRA on the reused base: the fresh load's numbers, bit for bit
        assert losses == fresh_losses and all(torch.equal(adapter[k], fresh[k]) for k in fresh)
    base = load_causal_lm(tiny_model)  # the base the fine-tunes borrowed, handed back as loaded
    assert MODELS.loads == loads + 1 and "forward" not in vars(base) and not base.training
    with MODELS.disabled():
        assert base.config.to_dict() == load_causal_lm(tiny_model).config.to_dict()
    assert all(torch.equal(t, loaded[k]) for k, t in base.state_dict().items())
    loads = MODELS.loads
    nll = [reference_nll(tiny_model, examples, adapter=str(tmp_path / "reused1"), max_length=64) for _ in range(2)]
    assert MODELS.loads == loads + 1  # the merged model, loaded once for both
    assert nll[0] == nll[1] == fresh_nll
