"""Hugging Face checkpoint I/O for post-training: load a causal LM, its tokenizer and item layout; write a
checkpoint (config, safetensors, tokenizer, generation config, itemic.json) all-or-nothing."""

from __future__ import annotations

import os
from typing import Optional

import torch

from megarec.common.dtypes import resolve_dtype
from megarec.common.errors import ConfigError
from megarec.common.itemic import ItemicLayout, find_itemic_json


def check_hf_dir(path: Optional[str], key: str) -> str:
    if not path:
        raise ConfigError(f"{key} is required (an HF checkpoint directory)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{key}={path} is not an HF checkpoint directory (no config.json)")
    return path


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto → bf16 on GPU, fp32 on CPU; or the named dtype."""
    return resolve_dtype(name, device.type == "cuda")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"{path}: the tokenizer has no chat template (post-training formats chats with it)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_item_layout(*dirs: Optional[str]):
    """The `ItemicLayout` of the first itemic.json in `dirs`, or None."""
    path = find_itemic_json(*dirs)
    return ItemicLayout.load(path) if path else None


def load_causal_lm(path: str, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """An AutoModelForCausalLM from `path` (weights in `dtype`)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight load would bury the training log
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot load the model ({str(e).splitlines()[0]})") from None
    return model


def tied_embeddings(config) -> bool:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


def save_hf_checkpoint(
    out_dir: str,
    config,
    state_dict: dict,
    tokenizer,
    source_dirs: list[str],
    dtype: torch.dtype,
    max_shard_size: str = "5GB",
) -> str:
    """Write an HF checkpoint from a full (gathered, CPU) state dict; `out_dir` appears only when complete.

    Non-weight files (generation_config.json, chat template files, itemic.json, …) are copied from the
    source directories first, then config.json and the tokenizer are written from the live objects.
    """
    from megarec.common.hfdir import copy_assets, parse_size, write_safetensors
    from megarec.common.outdir import staged_dir

    tensors = {}
    for name, t in state_dict.items():
        if name == "lm_head.weight" and tied_embeddings(config):
            continue  # stored once, as the input embedding
        tensors[name] = t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype)
    with staged_dir(out_dir, force=True, flag="checkpoint.output") as stage:
        for src in reversed([d for d in source_dirs if d and os.path.isdir(d)]):
            copy_assets(src, stage, skip=("config.json", "trainer_state.pt", "optimizer.pt"))
        write_safetensors(stage, tensors, parse_size(max_shard_size))
        config.dtype = dtype
        config.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
    return out_dir
