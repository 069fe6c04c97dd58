"""`megarec preprocess` and `megarec data build|inspect|dedup` (argument parsing only; work happens in
megarec.data.* modules imported when a verb runs)."""

from __future__ import annotations

import argparse
import os
import sys

from megarec.common.errors import ConfigError
from megarec.common.outdir import FORCE_HELP, check_out_dir, staged_dir


def register(sub) -> None:
    _register_preprocess(sub)
    p = sub.add_parser(
        "data",
        help="Build task samples from recommendation logs; inspect and dedup datasets.",
        description="Recommendation data tools.",
    )
    verbs = p.add_subparsers(dest="data_verb", metavar="<action>", required=True)
    _register_build(verbs)
    _register_inspect(verbs)
    _register_dedup(verbs)


def _register_preprocess(sub) -> None:
    p = sub.add_parser(
        "preprocess",
        help="Tokenise JSONL/parquet samples into Megatron indexed datasets (.bin/.idx, loss masks, packing).",
        description="Tokenise samples with a Hugging Face fast tokenizer in parallel worker processes and write "
        "P_text_document.{bin,idx} (plus P_loss_mask_document.{bin,idx} for chat messages). "
        "Resumable: re-running the same command after an interruption continues from finished shards.",
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="Input files: .jsonl/.json (optionally .gz) or .parquet.",
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="Hugging Face fast tokenizer directory.")
    p.add_argument(
        "--output-prefix",
        "-o",
        required=True,
        metavar="P",
        help="Output prefix; writes P_text_document.bin/.idx and more (P must not be the current "
        "directory or an ancestor of it).",
    )
    p.add_argument("--workers", type=int, default=1, help="Worker processes (default 1).")
    p.add_argument(
        "--kind",
        choices=["text", "segments", "messages"],
        default=None,
        help="Row kind; default: detected from the first row.",
    )
    p.add_argument("--json-key", default="text", help="Field holding the text for --kind text (default 'text').")
    p.add_argument(
        "--seq-length",
        type=int,
        default=None,
        metavar="S",
        help="Pack capacity in tokens (with --pack); longer samples are rejected.",
    )
    p.add_argument(
        "--pack",
        action="store_true",
        help="Best-fit pack samples into packs of <= S tokens (one Megatron document per pack).",
    )
    p.add_argument(
        "--on-error",
        choices=["fail", "skip"],
        default="fail",
        help="Bad row: fail naming file and row (default), or skip it and list it in P.rejects.jsonl.",
    )
    p.add_argument(
        "--shard-rows",
        type=int,
        default=20000,
        help="Rows per shard, the unit of parallel work and of resumption (default 20000).",
    )
    p.add_argument(
        "--itemic",
        default=None,
        metavar="PATH",
        help="itemic.json for 'itemic' segments (default: TOKENIZER/itemic.json if present).",
    )
    p.add_argument(
        "--assistant-header",
        default="<|im_start|>assistant\n",
        help="Text that opens an assistant turn in the chat template (default Qwen3's).",
    )
    p.add_argument(
        "--assistant-end",
        default="<|im_end|>",
        help="Token that closes an assistant turn; it is trained on (default <|im_end|>).",
    )
    p.add_argument(
        "--allow-unknown-itemic-tokens",
        action="store_true",
        help="Tokenise text written like itemic tokens (<|sid_begin|>, <s_a_7>, ...) that are not tokens of "
        "--tokenizer as ordinary text. Default: refuse such a row (file, row and field named), since it means a "
        "tokenizer without itemic tokens (use the one `megarec expand-vocab` wrote) or a code beyond the codebook.",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Show a progress bar (default: only on a terminal).",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="Replace a non-empty P.parts work directory that preprocess did not write (one it wrote "
        "is resumed, or restarted when the inputs or settings changed).",
    )
    p.set_defaults(func=run_preprocess_cmd)


def run_preprocess_cmd(args) -> int:
    from megarec.data.preprocess import PreprocessOptions, run_preprocess

    header = args.assistant_header.replace("\\n", "\n")  # accept a literal backslash-n from the shell
    opts = PreprocessOptions(
        inputs=args.input,
        tokenizer=args.tokenizer,
        output_prefix=args.output_prefix,
        workers=args.workers,
        kind=args.kind,
        json_key=args.json_key,
        seq_length=args.seq_length,
        pack=args.pack,
        on_error=args.on_error,
        shard_rows=args.shard_rows,
        itemic=args.itemic,
        assistant_header=header,
        assistant_end=args.assistant_end,
        progress=args.progress,
        force=args.force,
        allow_unknown_itemic=args.allow_unknown_itemic_tokens,
    )
    res = run_preprocess(opts)
    secs = max(res.seconds, 1e-9)
    line = (
        f"{res.documents} documents, {res.tokens} tokens in {res.seconds:.1f}s "
        f"({res.documents / secs:,.0f} docs/s, {res.tokens / secs:,.0f} tokens/s)"
    )
    if res.packs is not None:
        line += f", {res.packs} packs"
    print(line)
    if res.rejected:
        print(
            f"rejected {res.rejected} rows: "
            + "; ".join(f"{n}x {r}" for r, n in res.reasons.items())
            + f" (listed in {args.output_prefix}.rejects.jsonl)"
        )
    for path in res.outputs:
        print(f"wrote {path}")
    return 0


def _register_build(verbs) -> None:
    b = verbs.add_parser(
        "build",
        help="Build pre-training / SFT / RL samples from a recommendation log.",
        description="Read a source log, validate it, split users without leakage and write pretrain/, sft/, rl/ "
        "JSONL plus items.jsonl, codes.csv and build_report.json under --out.",
    )
    b.add_argument(
        "--source",
        required=True,
        help="synthetic | ml-100k | amazon:<dir> | raw:<dir> (items.* + users.* in megarec's schema).",
    )
    b.add_argument(
        "--out", required=True, metavar="DIR", help="Output directory (must be missing or empty unless --force)."
    )
    b.add_argument("--lang", default="en", help="Template language (en, zh) or a template YAML path.")
    b.add_argument("--seed", type=int, default=0, help="Seed for the split, sampling and template choice.")
    b.add_argument(
        "--codes",
        default=None,
        metavar="FILE",
        help="Item codes table (item_id,c1..cL) from the itemic tokenizer; default: the source's own "
        "(synthetic) or deterministic placeholder codes.",
    )
    b.add_argument(
        "--split",
        choices=["auto", "user", "loo"],
        default="auto",
        help="user: held-out test users; loo: leave-one-out per user; auto: source default.",
    )
    b.add_argument("--test-frac", type=float, default=0.1, help="Fraction of test users for --split user.")
    b.add_argument("--rec-targets", type=int, default=1, help="Items to predict per rec sample (--split user).")
    b.add_argument("--samples-per-user", type=int, default=2, help="Training cut points per user, domain and task.")
    b.add_argument("--min-history", type=int, default=2, help="Shortest history context of a sample.")
    b.add_argument("--max-history", type=int, default=20, help="Longest history shown in a prompt.")
    b.add_argument(
        "--caption-holdout-frac",
        type=float,
        default=0.05,
        help="Items whose captions are held out for item-understanding evaluation.",
    )
    b.add_argument(
        "--test-target-captions",
        choices=["include", "exclude"],
        default="include",
        help="Whether captions of test/valid target items may appear in training samples.",
    )
    b.add_argument(
        "--max-sequence-items", type=int, default=100, help="Items per pre-training behaviour-sequence sample."
    )
    b.add_argument(
        "--sequence-windows",
        choices=["last", "all"],
        default="last",
        help="Pre-training behaviour sequences of a history longer than --max-sequence-items: the most recent "
        "window only, or all consecutive windows from the end (every training item is a next-item target once).",
    )
    b.add_argument("--no-system-prompt", action="store_true", help="Do not add the template's system message.")
    b.add_argument("--num-users", type=int, default=None, help="synthetic: number of users (default 200).")
    b.add_argument("--num-items", type=int, default=None, help="synthetic: number of items (default 600).")
    b.add_argument(
        "--on-error",
        choices=["fail", "drop"],
        default="fail",
        help="Schema violation, or an item missing from --codes: fail naming file/row/field (or the missing "
        "items), or drop and report it.",
    )
    b.add_argument("--cache-dir", default=None, help="Download cache (default $MEGAREC_CACHE or ~/.cache/megarec).")
    b.add_argument("--force", action="store_true", help=FORCE_HELP)
    b.set_defaults(func=run_build)


def _source_dir(source: str) -> str | None:
    """The directory of an `amazon:<dir>` / `raw:<dir>` source (an input --out must not be or contain)."""
    kind, sep, path = source.partition(":")
    return path if sep and kind in ("amazon", "raw") else None


def run_build(args) -> int:
    for flag, value in (("--num-users", args.num_users), ("--num-items", args.num_items)):
        if value is not None and not args.source.startswith("synthetic"):
            raise ConfigError(f"{flag} applies to --source synthetic only (got --source {args.source})")
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    lang_file = args.lang if os.path.isfile(args.lang) else None
    inputs = [
        ("--source", _source_dir(args.source)),
        ("--codes", args.codes),
        ("--lang", lang_file),
        ("--cache-dir", args.cache_dir),
    ]
    check_out_dir(args.out, force=args.force, inputs=inputs)
    from megarec.data.tasks.build import build_tasks, check_codes_cover, resolve_codes, write_build
    from megarec.data.tasks.config import BuildConfig
    from megarec.rawdata.sources import load_source

    cfg = BuildConfig(
        seed=args.seed,
        lang=args.lang,
        split=args.split,
        test_frac=args.test_frac,
        min_history=args.min_history,
        max_history=args.max_history,
        rec_targets=args.rec_targets,
        samples_per_user=args.samples_per_user,
        caption_holdout_frac=args.caption_holdout_frac,
        test_target_captions=args.test_target_captions,
        system_prompt=not args.no_system_prompt,
        max_sequence_items=args.max_sequence_items,
        sequence_windows=args.sequence_windows,
    )
    cfg.validate()
    src = load_source(
        args.source,
        seed=args.seed,
        num_users=args.num_users,
        num_items=args.num_items,
        cache_dir=args.cache_dir,
        on_error=args.on_error,
    )
    codes, codes_source = resolve_codes(src.log, src.codes, args.codes, args.seed)
    check_codes_cover(src.log, codes, f"--codes {args.codes}" if args.codes else codes_source, args.on_error)
    if codes_source.startswith("placeholder"):
        print(f"note: using {codes_source}", file=sys.stderr)
    built = build_tasks(src.log, codes, cfg, src.default_split)
    with staged_dir(args.out, force=args.force, inputs=inputs) as stage:
        report = write_build(stage, built, codes, cfg, codes_source, args.source)
    print(f"{report['items']} items, {report['users']} users, split {report['split']}")
    for rel, counts in report["samples"].items():
        print(f"{rel}: {sum(counts.values())} samples " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print(f"schema: {src.log.report.summary()}; report in {args.out}/build_report.json")
    return 0


def _register_inspect(verbs) -> None:
    i = verbs.add_parser(
        "inspect",
        help="Summarise an indexed dataset and decode a few samples.",
        description="Counts, length histogram and decoded samples (itemic tokens shown) of a "
        "Megatron indexed dataset written by `megarec preprocess`.",
    )
    i.add_argument(
        "prefix", metavar="P", help="Output prefix given to preprocess (P) or a dataset prefix (P_text_document)."
    )
    i.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="Tokenizer for decoding (default: the one recorded in P.preprocess.json).",
    )
    i.add_argument("--samples", type=int, default=3, help="Number of samples to decode (default 3).")
    i.add_argument("--seed", type=int, default=0, help="Which samples to show (seeded choice).")
    i.add_argument("--max-chars", type=int, default=1500, help="Truncate each decoded sample to this many characters.")
    i.add_argument("--bins", type=int, default=10, help="Length histogram bins.")
    i.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    from megarec.data.inspect import inspect_dataset

    print(
        inspect_dataset(
            args.prefix,
            tokenizer=args.tokenizer,
            samples=args.samples,
            seed=args.seed,
            max_chars=args.max_chars,
            bins=args.bins,
        )
    )
    return 0


def _register_dedup(verbs) -> None:
    d = verbs.add_parser(
        "dedup",
        help="Drop training samples near-duplicate to evaluation samples (MinHash LSH).",
        description="MinHash LSH over word shingles of each sample's text; a training sample whose "
        "estimated Jaccard similarity to any evaluation sample reaches --threshold is "
        "dropped. Writes the kept rows of each training file under --out.",
    )
    d.add_argument("--train", nargs="+", required=True, metavar="FILE", help="Training JSONL/parquet files.")
    d.add_argument("--eval", nargs="+", required=True, metavar="FILE", help="Evaluation JSONL/parquet files.")
    d.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="Directory for the filtered training files (JSONL; must be missing or empty unless --force).",
    )
    d.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity threshold (default 0.8).")
    d.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128).")
    d.add_argument("--ngram", type=int, default=5, help="Word n-gram shingle size (default 5).")
    d.add_argument("--json-key", default="text", help="Text field for plain-text rows (default 'text').")
    d.add_argument("--force", action="store_true", help=FORCE_HELP)
    d.set_defaults(func=run_dedup)


def run_dedup(args) -> int:
    check_out_dir(
        args.out, force=args.force, inputs=[("--train", p) for p in args.train] + [("--eval", p) for p in args.eval]
    )
    from megarec.data.dedup import DedupOptions, dedup_files

    report = dedup_files(
        DedupOptions(
            train=args.train,
            eval=args.eval,
            out=args.out,
            threshold=args.threshold,
            num_perm=args.num_perm,
            ngram=args.ngram,
            json_key=args.json_key,
            force=args.force,
        )
    )
    for f in report["files"]:
        print(f"{f['input']}: kept {f['kept']} of {f['rows']}, dropped {f['dropped']} near-duplicates → {f['output']}")
    print(
        f"total: dropped {report['dropped']} of {report['rows']} training rows "
        f"(eval samples: {report['eval_rows']}, threshold {report['threshold']})"
    )
    return 0
