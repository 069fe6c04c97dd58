"""`megarec convert hf-to-mcore | mcore-to-hf | verify | megatron-lm-flags`: HF Qwen3 ↔ Megatron-Core dist
checkpoints, and the Megatron-LM command line that loads one."""

from __future__ import annotations

from megarec.common.outdir import FORCE_HELP, check_out_dir


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="Convert Qwen3 checkpoints between Hugging Face and Megatron-Core (any TP/PP), and verify logits.",
        description="Convert Qwen3 checkpoints between Hugging Face format and the Megatron-Core dist checkpoint "
        "the pre-training engine loads (checkpoint.init_from=<out>), and check that both give the "
        "same logits.",
    )
    verbs = p.add_subparsers(dest="convert_verb", metavar="<action>", required=True)

    a = verbs.add_parser(
        "hf-to-mcore",
        help="HF Qwen3 directory → Megatron-Core dist checkpoint (one process; loads at any TP/PP).",
        description="Read config.json and model*.safetensors (or pytorch_model*.bin) of a Qwen3 checkpoint, "
        "pad the vocabulary to a multiple of --make-vocab-size-divisible-by × --tp (zero rows), and "
        "write <out>/iter_0000000 + latest_checkpointed_iteration.txt, plus the HF non-weight files "
        "in <out>/hf_assets for the way back. Runs in one process; the dist checkpoint is global, "
        "so it loads at --tp/--pp and at any other layout whose TP divides the padding.",
    )
    a.add_argument("--hf-dir", required=True, help="HF checkpoint directory (config.json + weights).")
    a.add_argument("--out", required=True, help="Output checkpoint root (must not exist or be empty, see --force).")
    a.add_argument(
        "--tp",
        type=int,
        default=1,
        help="Tensor-parallel size the checkpoint is meant for "
        "(sets the vocabulary padding and is checked against heads / KV groups / ffn). Default %(default)s.",
    )
    a.add_argument(
        "--pp",
        type=int,
        default=1,
        help="Pipeline-parallel size the checkpoint is meant for "
        "(checked against the number of layers). Default %(default)s.",
    )
    a.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="Pad the vocabulary to a multiple of this × TP (Megatron's rule; same as "
        "model.make_vocab_size_divisible_by in pre-training). Default %(default)s.",
    )
    a.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="Checkpoint dtype; auto = bf16 when the HF weights are bf16, else fp32 (lossless).",
    )
    a.add_argument("--force", action="store_true", help=FORCE_HELP)
    a.set_defaults(func=run_hf_to_mcore)

    b = verbs.add_parser(
        "mcore-to-hf",
        help="Megatron-Core dist checkpoint (any TP/PP, converted or trained) → HF Qwen3 directory.",
        description="Read a megarec dist checkpoint (root with latest_checkpointed_iteration.txt, or one "
        "iter_XXXXXXX dir), cut the vocabulary padding back to the config's vocab_size and write "
        "config.json, model.safetensors (sharded with an index above --max-shard-size), and the "
        "tokenizer files, generation_config.json and itemic.json of the HF source recorded at "
        "import (or of --hf-template).",
    )
    b.add_argument("--mcore-dir", required=True, help="Checkpoint root or iteration directory.")
    b.add_argument("--out", required=True, help="Output HF directory (must not exist or be empty, see --force).")
    b.add_argument(
        "--hf-template",
        default=None,
        help="HF directory whose config.json and tokenizer/generation/itemic files to use (default: "
        "the ones recorded at import, or the pre-training run's model.hf_config).",
    )
    b.add_argument(
        "--max-shard-size",
        default="5GB",
        help="Largest safetensors shard (e.g. 5GB, 500MB, 2GiB). Default %(default)s.",
    )
    b.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="Weight dtype; auto = the HF config's dtype (else the checkpoint's).",
    )
    b.add_argument("--force", action="store_true", help=FORCE_HELP)
    b.set_defaults(func=run_mcore_to_hf)

    c = verbs.add_parser(
        "verify",
        help="Compare fp32 logits of the Megatron model (from --mcore-dir, at --tp/--pp) and the HF model.",
        description="Build megarec's Megatron model from --mcore-dir at --tp/--pp and the HF model from --hf-dir, "
        "run both on the same random tokens in fp32 and print one JSON line (cosine, max_abs_diff, "
        "top1_agreement, losses). Exit status 1 when a threshold is not met. For TP×PP > 1 run "
        "under torchrun: torchrun --nproc_per_node TP*PP -m megarec convert verify ...",
    )
    c.add_argument("--hf-dir", required=True, help="HF checkpoint directory (the reference).")
    c.add_argument("--mcore-dir", required=True, help="Megatron checkpoint root or iteration directory.")
    c.add_argument(
        "--tp", type=int, default=1, help="Tensor-parallel size to load the Megatron model at. Default %(default)s."
    )
    c.add_argument(
        "--pp", type=int, default=1, help="Pipeline-parallel size to load the Megatron model at. Default %(default)s."
    )
    c.add_argument("--seq-length", type=int, default=32, help="Tokens per sequence. Default %(default)s.")
    c.add_argument("--batch-size", type=int, default=2, help="Number of sequences. Default %(default)s.")
    c.add_argument("--seed", type=int, default=1234, help="Seed of the random token ids. Default %(default)s.")
    c.add_argument(
        "--min-cosine",
        type=float,
        default=0.9999,
        help="Fail below this cosine similarity of the logits. Default %(default)s.",
    )
    c.add_argument(
        "--max-abs-diff", type=float, default=None, help="Fail above this max |logit difference| (unset: not checked)."
    )
    c.add_argument(
        "--min-top1-agreement",
        type=float,
        default=None,
        help="Fail below this fraction of positions with the same argmax token (unset: not checked).",
    )
    c.add_argument(
        "--local-attention",
        choices=["sdpa", "unfused"],
        default="sdpa",
        help="Core attention of megarec's local layer spec. Default %(default)s.",
    )
    c.set_defaults(func=run_verify)

    d = verbs.add_parser(
        "megatron-lm-flags",
        help="Print the Megatron-LM flags that load a megarec checkpoint (model, padded vocabulary, load mode).",
        description="Read the Megatron-LM args megarec writes into every checkpoint and print, on one line, the "
        "Megatron-LM (core_v0.16.1) flags that rebuild the same model and load the checkpoint. "
        "Megatron-LM does not take --qk-layernorm, --norm-epsilon or the padded vocabulary from a "
        "checkpoint, and a model built without them can load it silently wrong. Add your data, "
        "parallelism and logging flags. See docs/convert.md.",
    )
    d.add_argument(
        "--mcore-dir",
        required=True,
        help="Checkpoint root (→ --load) or one iter_XXXXXXX directory (→ --load <root> --ckpt-step N).",
    )
    d.add_argument(
        "--mode",
        choices=["weights", "resume"],
        default="weights",
        help="weights: --finetune (weights only, iteration 0). resume: iteration, consumed samples, "
        "optimizer and LR schedule (the schedule flags the checkpoint's values need). "
        "Default %(default)s.",
    )
    d.set_defaults(func=run_megatron_lm_flags)


def run_hf_to_mcore(args) -> int:
    import json

    check_out_dir(args.out, force=args.force, inputs=[("--hf-dir", args.hf_dir)])
    from megarec.convert.importer import hf_to_mcore

    summary = hf_to_mcore(
        args.hf_dir, args.out, args.tp, args.pp, args.make_vocab_size_divisible_by, args.dtype, args.force
    )
    print(json.dumps(summary), flush=True)
    return 0


def run_mcore_to_hf(args) -> int:
    import json

    check_out_dir(
        args.out, force=args.force, inputs=[("--mcore-dir", args.mcore_dir), ("--hf-template", args.hf_template)]
    )
    from megarec.convert.exporter import mcore_to_hf

    summary = mcore_to_hf(args.mcore_dir, args.out, args.hf_template, args.max_shard_size, args.dtype, args.force)
    print(json.dumps(summary), flush=True)
    return 0


def run_verify(args) -> int:
    import json

    from megarec.convert.verify import verify

    metrics, passed = verify(
        args.hf_dir,
        args.mcore_dir,
        args.tp,
        args.pp,
        args.seq_length,
        args.batch_size,
        args.seed,
        args.min_cosine,
        args.max_abs_diff,
        args.min_top1_agreement,
        args.local_attention,
    )
    if metrics is not None:
        print(json.dumps(metrics), flush=True)
    return 0 if passed else 1


def run_megatron_lm_flags(args) -> int:
    import shlex

    from megarec.runtime.megatron_checkpoint import ensure_single_process_group, flags_for_checkpoint

    ensure_single_process_group()
    print(shlex.join(flags_for_checkpoint(args.mcore_dir, args.mode)), flush=True)
    return 0
