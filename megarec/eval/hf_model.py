"""Loading an expanded HF checkpoint for evaluation: model, tokenizer, item token layout, chat prompts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from megarec.common.errors import ConfigError


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    layout: object  # ItemicLayout
    path: str


def load_hf_model(path: str, *, itemic: str | None = None, dtype: str = "auto") -> LoadedModel:
    """Model + tokenizer from an HF directory; the item layout from `itemic` or `<path>/itemic.json`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megarec.common.dtypes import resolve_dtype
    from megarec.common.itemic import ItemicLayout

    if not os.path.isdir(path):
        raise ConfigError(f"{path}: model directory not found")
    layout = ItemicLayout.coerce(itemic or path)
    torch_dtype = resolve_dtype(dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    if max(layout.sid_end_id, *layout.itemic_token_ids()) >= vocab:
        raise ConfigError(f"{path}: itemic token ids reach {layout.sid_end_id}, the model has {vocab} output rows")
    return LoadedModel(model, tokenizer, layout, path)


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """Prompt text up to the assistant's first token (Qwen3: thinking switched off)."""
    if not getattr(tokenizer, "chat_template", None):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
    except TypeError:  # templates that do not take enable_thinking
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
