"""Tiny offline assets for tests, benchmarks and smoke runs of post-training: a word-level tokenizer with
Qwen3's chat tokens and chat template, random `Qwen3ForCausalLM` checkpoints built from `Qwen3Config`,
and their vocabulary expansion through `megarec.itemic.expand` (itemic tokens + itemic.json).

Ids follow the real layout: Qwen3's control tokens, then the words, then (expanded) every `<s_a_*>`,
every `<s_b_*>`, …, `<|sid_begin|>`, `<|sid_end|>`, starting at the base tokenizer's length. Nothing
here is used by the trainers themselves.
"""

from __future__ import annotations

import json
import os
import string
from typing import Optional, Sequence

import torch

CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
BASE_WORDS = (
    (
        "system",
        "user",
        "assistant",
        "\n",
        "\n\n",
        "\n\n\n",
        " ",
        "/think",
        "/no_think",
        "recommend",
        "a",
        "an",
        "the",
        "film",
        "song",
        "video",
        "for",
        "me",
        "please",
        "likes",
        "watched",
        "next",
        "item",
        "is",
        "here",
        "why",
        "because",
        "it",
        "good",
        "great",
        "fun",
        "sad",
        "calm",
        "hello",
        "world",
        "yes",
        "no",
        "and",
        "or",
        "of",
        "to",
        "you",
        "will",
        "like",
        "this",
        "that",
        ".",
        ",",
        "?",
        "!",
        ":",
        "You",
        "are",
        "helpful",
        "assistant.",
    )
    + tuple(string.digits)
    + tuple(f"user{i}" for i in range(16))
    + tuple(f"topic{i}" for i in range(16))
)


def build_tokenizer(out_dir: str, words: Sequence[str] = BASE_WORDS) -> str:
    """A word-level HF fast tokenizer (every word also with a leading space) with Qwen3's chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from megarec.tokenizer.qwen3_offline import chat_template

    vocab: dict[str, int] = {}
    for tok in CONTROL_TOKENS:
        vocab[tok] = len(vocab)
    vocab["[UNK]"] = len(vocab)
    for w in words:
        for form in (w, " " + w) if not w.isspace() else (w,):
            if form not in vocab:
                vocab[form] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n+| ?[^\s]+| +"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS[:3]])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CONTROL_TOKENS[3:]])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]"
    )
    fast.chat_template = chat_template()
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def tiny_config(
    vocab_size: int,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    ffn: int = 64,
    tie: bool = True,
    init_std: float = 0.02,
):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=1024,
        tie_word_embeddings=tie,
        rms_norm_eps=1e-6,
        attention_dropout=0.0,
        use_cache=True,
        initializer_range=init_std,
    )


def _pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_model(out_dir: str, tokenizer_dir: str, *, seed: int = 0, pad_multiple: int = 16, **arch) -> str:
    """A random tiny Qwen3 checkpoint (fp32) next to a copy of the tokenizer."""
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(_pad_to(len(tok), pad_multiple), **arch))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    itemic = os.path.join(tokenizer_dir, "itemic.json")
    if os.path.isfile(itemic):
        with open(itemic) as f:
            meta = json.load(f)
        with open(os.path.join(out_dir, "itemic.json"), "w") as f:
            json.dump(meta, f, indent=2)
    return out_dir


def expand(
    base_dir: str,
    out_dir: str,
    num_layers: int,
    codebook_size: int,
    *,
    seed: int = 0,
    pad_multiple: int = 16,
    itemic_logit_bias: float = 0.0,
    weight_noise: float = 0.0,
) -> dict:
    """Vocabulary expansion of a tiny checkpoint with `megarec.itemic.expand.expand_checkpoint` (tokenizer,
    multivariate-normal rows, itemic.json), then optional test-only edits: `itemic_logit_bias` > 0 makes
    the new tokens likely everywhere (a student that emits them) by adding a component along the mean
    final hidden direction to their output rows; `weight_noise` > 0 perturbs every other matrix (a
    student that differs from its base). Returns the itemic.json fields."""
    from transformers import AutoModelForCausalLM

    from megarec.itemic.expand import expand_checkpoint

    layout = expand_checkpoint(
        base_dir, out_dir, num_layers=num_layers, codebook_size=codebook_size, pad_to_multiple=pad_multiple, seed=seed
    )
    meta = layout.to_dict()
    if itemic_logit_bias or weight_noise:
        model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            if weight_noise:
                for name, p in model.named_parameters():
                    if p.dim() >= 2 and "embed_tokens" not in name and "lm_head" not in name:
                        p.add_(weight_noise * p.std() * torch.randn(p.shape, generator=gen))
            if itemic_logit_bias:
                direction = _mean_hidden_direction(model, meta["first_id"])
                out = model.get_output_embeddings().weight
                out[meta["first_id"] : meta["last_id"] + 1] += itemic_logit_bias * direction
        model.save_pretrained(out_dir)
    return meta


def _mean_hidden_direction(model, base: int) -> torch.Tensor:
    """Unit vector of the average final hidden state over random base-vocabulary text."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, base, (8, 32), generator=gen)
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state.reshape(-1, model.config.hidden_size)
    d = h.mean(0)
    return d / d.norm().clamp(min=1e-6)


def write_jsonl(path: str, rows: Sequence[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def chat_row(user: str, answer: Optional[str] = None, system: Optional[str] = None, **meta) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    row = {"messages": messages}
    if meta:
        row["metadata"] = meta
    return row


def run_trainer(verb: str, overrides: Sequence[str], recipe: Optional[str] = None):
    """Run one post-training verb in this process (single rank); returns (trainer, RunSummary)."""
    import importlib

    from megarec.common.config import load_config
    from megarec.posttrain import config as pt_config
    from megarec.posttrain.cli import VERBS
    from megarec.runtime.distributed import single_process_env

    cfg_name, module, trainer_name, _, _ = VERBS[verb]
    cfg = load_config(getattr(pt_config, cfg_name), recipe, list(overrides))
    trainer = getattr(importlib.import_module(module), trainer_name)(cfg, single_process_env())
    return trainer, trainer.fit()
