"""`megarec tokenizer build-qwen3`: write the offline Qwen3-layout HF tokenizer to a directory."""

from __future__ import annotations

from megarec.common.outdir import FORCE_HELP, check_out_dir


def register(sub) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="Text tokenizer utilities (offline Qwen3-layout tokenizer).",
        description="Text tokenizer utilities.",
    )
    verbs = p.add_subparsers(dest="tokenizer_verb", metavar="<action>", required=True)
    b = verbs.add_parser(
        "build-qwen3",
        help="Build a Qwen3-layout HF fast tokenizer offline from qwen.tiktoken.",
        description="Build a Hugging Face fast tokenizer with Qwen3's exact layout (151,643 byte-level BPE ranks, "
        "then Qwen3's 26 added tokens, Qwen3 chat template). The BPE ranks come from --tiktoken, or "
        "else from the dashscope wheel fetched once with `pip download` into the cache.",
    )
    b.add_argument("--out", required=True, help="Output directory (created if missing; must be empty unless --force).")
    b.add_argument(
        "--tiktoken",
        default=None,
        metavar="PATH",
        help="Local qwen.tiktoken file; default: fetch it from the dashscope wheel on PyPI.",
    )
    b.add_argument(
        "--cache-dir",
        default=None,
        help="Cache for qwen.tiktoken and built tokenizers (default: $MEGAREC_CACHE or ~/.cache/megarec).",
    )
    b.add_argument(
        "--bpe-ranks",
        type=int,
        default=None,
        metavar="N",
        help="Keep only the first N of the 151,643 BPE ranks (the most frequent merges; N >= 256). "
        "Same algorithm, regex, added tokens and chat template, but a smaller vocabulary "
        "whose added tokens start at id N: for CPU-sized models, whose output layer "
        "would otherwise dominate compute. Default: all ranks (the real Qwen3 ids).",
    )
    b.add_argument("--force", action="store_true", help=FORCE_HELP)
    b.set_defaults(func=run_build_qwen3)


def run_build_qwen3(args) -> int:
    check_out_dir(args.out, force=args.force, inputs=[("--tiktoken", args.tiktoken), ("--cache-dir", args.cache_dir)])
    from megarec.tokenizer.qwen3_offline import build_qwen3_tokenizer

    out = build_qwen3_tokenizer(
        args.out, args.tiktoken, cache_dir=args.cache_dir, bpe_ranks=args.bpe_ranks, force=args.force
    )
    print(f"wrote Qwen3-layout tokenizer to {out}")
    return 0
