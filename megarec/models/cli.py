"""`megarec init-model`: a randomly initialised Qwen3 HF checkpoint for a tokenizer (preset + overrides)."""

from __future__ import annotations

import os

from megarec.common.errors import ConfigError
from megarec.common.outdir import FORCE_HELP, check_out_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def register(sub) -> None:
    from megarec.models.qwen3.presets import PRESETS

    p = sub.add_parser(
        "init-model",
        help="Create a randomly initialised Qwen3 HF checkpoint for a tokenizer (from-scratch runs).",
        description="Write a Qwen3ForCausalLM with random weights (normal, std --init-std), the architecture of "
        "--preset with any overrides, and vocabulary size = the tokenizer's length, plus the "
        "tokenizer files. It plays the role of the pre-trained base model where none is available "
        "(the CPU demo, scaling-law runs from scratch); `megarec expand-vocab` then adds itemic tokens.",
    )
    p.add_argument("--tokenizer", required=True, help="HF tokenizer directory (e.g. `megarec tokenizer build-qwen3`).")
    p.add_argument("--out", required=True, help="Output checkpoint directory (must be empty unless --force).")
    p.add_argument("--preset", default="qwen3-small", help=f"Architecture preset: {', '.join(PRESETS)}.")
    p.add_argument("--num-layers", type=int, default=None, help="Override the number of decoder layers.")
    p.add_argument("--hidden-size", type=int, default=None, help="Override the hidden size.")
    p.add_argument("--ffn-hidden-size", type=int, default=None, help="Override the SwiGLU intermediate size.")
    p.add_argument("--num-attention-heads", type=int, default=None, help="Override the number of query heads.")
    p.add_argument("--num-query-groups", type=int, default=None, help="Override the number of KV heads.")
    p.add_argument("--head-dim", type=int, default=None, help="Override the head dimension.")
    p.add_argument("--untied", action="store_true", help="Separate output layer (default: the preset's choice).")
    p.add_argument("--max-position-embeddings", type=int, default=None, help="Override the longest context.")
    p.add_argument("--init-std", type=float, default=0.02, help="Std of the normal weight initialisation.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=run_init_model)


def _check_tokenizer_dir(path: str) -> None:
    """A local HF tokenizer directory, checked before transformers is imported (it would take a missing
    directory for a Hub repo id and fail with a message about repo names)."""
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "directory not found"
        raise ConfigError(f"--tokenizer {path}: {what} (give an HF tokenizer directory)")
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise ConfigError(f"--tokenizer {path}: no tokenizer files ({' or '.join(TOKENIZER_FILES)})")


def run_init_model(args) -> int:
    check_out_dir(args.out, force=args.force, inputs=[("--tokenizer", args.tokenizer)])
    _check_tokenizer_dir(args.tokenizer)
    from megarec.models.hf_init import init_hf_model
    from megarec.models.qwen3.presets import get_preset

    arch = get_preset(args.preset).replace(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        head_dim=args.head_dim,
        max_position_embeddings=args.max_position_embeddings,
        tie_word_embeddings=False if args.untied else None,
    )
    try:
        arch.check()
    except ConfigError as e:
        raise ConfigError(f"--preset {args.preset} with the given overrides: {e}") from None
    info = init_hf_model(args.tokenizer, args.out, arch, seed=args.seed, init_std=args.init_std, force=args.force)
    print(f"wrote random Qwen3 ({info['parameters'] / 1e6:.2f}M parameters, vocab {info['vocab_size']}) to {args.out}")
    return 0
