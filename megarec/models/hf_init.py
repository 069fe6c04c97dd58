"""A randomly initialised Qwen3 Hugging Face checkpoint for a given tokenizer: the "base model" of
from-scratch runs and of the CPU demo, where no pre-trained Qwen3 weights are available offline.
The vocabulary size is the tokenizer's length, so `megarec expand-vocab` can extend it like a real Qwen3."""

from __future__ import annotations

from megarec.models.qwen3.presets import Qwen3Arch


def hf_qwen3_config(arch: Qwen3Arch, *, vocab_size: int, eos_token_id: int, pad_token_id: int, init_std: float = 0.02):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.ffn_hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_query_groups,
        head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings,
        rope_theta=arch.rope_theta,
        rms_norm_eps=arch.rms_norm_eps,
        tie_word_embeddings=arch.tie_word_embeddings,
        initializer_range=init_std,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        attention_bias=False,
        use_sliding_window=False,
        architectures=["Qwen3ForCausalLM"],
    )


def init_hf_model(
    tokenizer_dir: str, out: str, arch: Qwen3Arch, *, seed: int = 0, init_std: float = 0.02, force: bool = False
) -> dict:
    """Write a random `Qwen3ForCausalLM` (fp32 safetensors) plus the tokenizer files to `out`, atomically."""
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    from megarec.common.hfdir import copy_assets
    from megarec.common.outdir import check_out_dir, staged_dir

    inputs = [("--tokenizer", tokenizer_dir)]
    check_out_dir(out, force=force, inputs=inputs)
    from megarec.common.errors import ConfigError

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"--tokenizer {tokenizer_dir}: cannot load the tokenizer ({' '.join(str(e).split())})"
        ) from None
    if tok.eos_token_id is None:
        raise ConfigError(f"--tokenizer {tokenizer_dir}: the tokenizer has no eos token")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = hf_qwen3_config(
        arch, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=pad, init_std=init_std
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).float()
    with staged_dir(out, force=force, inputs=inputs) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        copy_assets(tokenizer_dir, stage)
        tok.save_pretrained(stage)
    params = sum(p.numel() for p in model.parameters())
    return {"out": out, "vocab_size": len(tok), "parameters": params}
