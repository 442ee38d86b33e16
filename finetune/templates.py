"""Chat templates for base models that ship none (LLaMA-3-8B base) or whose shipped one should be replaced.

``finetune.chat_template`` names one of these (or is a Jinja string). The template is set on the tokenizer before
tokenising and saved with the fine-tuned model, so generation renders prompts exactly as training did. Both
render conversations prefix by prefix, which the assistant-token mask in :mod:`finetune.sft` relies on.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# Meta's LLaMA-3 Instruct turn format (header tokens, <|eot_id|> ends a turn).
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# ChatML, the format of Qwen-2.5's instruct models (<|im_start|> role ... <|im_end|>).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ChatML after the tokenizer's BOS: for base models trained with a BOS at the start of every document (Gemma-3),
# whose vocabulary has no ChatML tokens (the markers are then plain text the fine-tune learns).
CHATML_BOS = "{{ bos_token }}" + CHATML

TEMPLATES = {"llama3": LLAMA3, "chatml": CHATML, "chatml_bos": CHATML_BOS}
END_OF_TURN = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>", "chatml_bos": "<|im_end|>"}


def set_chat_template(tok: PreTrainedTokenizerBase, template: str | None) -> None:
    """Install ``template`` (a name in TEMPLATES or a Jinja string) on ``tok``; None keeps the shipped one.

    Generation must stop at the template's end-of-turn token, so a named template also sets it as EOS when the
    tokenizer knows it."""
    if template is None:
        if tok.chat_template is None:
            from divcore.errors import InputError

            raise InputError(f"{tok.name_or_path} has no chat template (a base model?): set finetune.chat_template "
                             f"to one of {sorted(TEMPLATES)} or a Jinja string")
        return
    tok.chat_template = TEMPLATES.get(template, template)
    eot = END_OF_TURN.get(template)
    if eot is not None and eot in tok.get_vocab():
        tok.eos_token = eot
