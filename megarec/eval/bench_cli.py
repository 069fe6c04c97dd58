"""`megarec bench seqrec`: the leave-one-out transfer benchmark (Pop, SASRec, GRU4Rec and optionally a
generative megarec model), printed as one side-by-side table and written to results.json."""

from __future__ import annotations

from megarec.common.cli import add_renamed_flag
from megarec.common.outdir import FORCE_HELP, check_out_dir, staged_dir
from megarec.eval.seqrec_generative import PROMPT_KINDS

BASELINES = ("pop", "sasrec", "gru4rec")


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="Benchmarks (sequential-recommendation transfer benchmark).",
        description="Benchmarks of recommendation quality.",
    )
    verbs = p.add_subparsers(dest="bench_verb", metavar="<benchmark>", required=True)
    s = verbs.add_parser(
        "seqrec",
        help="Leave-one-out sequential recommendation: Recall/NDCG@5/10 vs Pop, SASRec, GRU4Rec.",
        description="Leave-one-out split (last item = test, second-last = validation), full ranking over all "
        "items with the user's history excluded, Recall@5/10 and NDCG@5/10. Baselines train with "
        "early stopping on validation NDCG@10. With --hf-dir, a megarec HF checkpoint ranks items "
        "by trie-constrained beam search over itemic tokens.",
    )
    s.add_argument(
        "--dataset",
        required=True,
        help="ml-100k (fetched once with pip into $MEGAREC_CACHE), amazon:<dir>, synthetic or raw:<dir>.",
    )
    s.add_argument("--domain", default=None, help="Domain whose histories to use (default: the largest).")
    s.add_argument(
        "--out", required=True, help="Output directory for results.json (must be missing or empty unless --force)."
    )
    s.add_argument(
        "--baselines",
        type=_csv,
        default=["pop", "sasrec"],
        help=f"Comma-separated baselines to run ({', '.join(BASELINES)}); empty string for none.",
    )
    s.add_argument(
        "--hf-dir",
        action="append",
        default=None,
        help="HF checkpoint directory (with itemic.json) of a megarec model; repeat it for the same pipeline "
        "trained with other seeds (reported as mean ± std, like --seeds).",
    )
    add_renamed_flag(s, "--hf-dir", "--model")
    s.add_argument(
        "--codes", default=None, help="Codes table (item_id,c1..cL) of the dataset's items; needed with --hf-dir."
    )
    s.add_argument("--itemic", default=None, help="itemic.json to use instead of <model>/itemic.json.")
    s.add_argument("--num-beams", type=int, default=20, help="Beam width of the generative model (>= 10).")
    s.add_argument(
        "--max-eval-users",
        type=int,
        default=None,
        help="Evaluate the generative model on a seeded subset of this many users.",
    )
    s.add_argument("--max-history", type=int, default=20, help="Most recent items shown in the generative prompt.")
    s.add_argument(
        "--prompt",
        choices=PROMPT_KINDS,
        default="chat",
        help="Prompt of the generative model: chat = the SFT next-item conversation (post-trained "
        "checkpoints); sequence = the pre-training behaviour-sequence text continued with the next item "
        "(a stage-2 checkpoint converted with `convert mcore-to-hf`, before any SFT).",
    )
    s.add_argument("--eval-batch-size", type=int, default=8, help="Prompts per beam-search batch.")
    s.add_argument("--lang", default="en", help="Prompt template language of the generative model (en, zh, or a YAML).")
    s.add_argument("--hidden", type=int, default=64, help="Hidden size of SASRec/GRU4Rec.")
    s.add_argument("--layers", type=int, default=2, help="SASRec blocks.")
    s.add_argument("--heads", type=int, default=2, help="SASRec attention heads.")
    s.add_argument("--max-len", type=int, default=50, help="Longest input sequence of the neural baselines.")
    s.add_argument("--dropout", type=float, default=0.2, help="Dropout of the neural baselines.")
    s.add_argument("--epochs", type=int, default=200, help="Maximum training epochs.")
    s.add_argument("--patience", type=int, default=5, help="Early stopping: epochs without validation improvement.")
    s.add_argument("--batch-size", type=int, default=128, help="Training batch size (windows).")
    s.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate.")
    s.add_argument("--time-budget", type=float, default=None, help="Seconds of training per baseline (then stop).")
    s.add_argument("--seed", type=int, default=0, help="Random seed (data loading, evaluation subset, prompts).")
    s.add_argument(
        "--seeds",
        type=_csv,
        default=None,
        help="Comma-separated training seeds of the neural baselines (default: --seed); with several, "
        "results.json holds every run and the table shows mean ± std.",
    )
    s.add_argument(
        "--time-budget-from",
        type=_csv,
        default=None,
        help="Comma-separated JSON files with a 'seconds' field (e.g. the demo's stage markers of the "
        "generative model's training stages): their sum divided by the number of --hf-dir "
        "checkpoints becomes --time-budget (the equal-CPU-time comparison).",
    )
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    s.add_argument("--cache-dir", default=None, help="Download cache (default: $MEGAREC_CACHE or ~/.cache/megarec).")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.set_defaults(func=run_seqrec)


def _inputs(args) -> list[tuple[str, str | None]]:
    kind, sep, path = args.dataset.partition(":")
    dataset_dir = path if sep and kind in ("amazon", "raw") else None
    return [
        ("--dataset", dataset_dir),
        *[("--hf-dir", m) for m in args.hf_dir or []],
        ("--codes", args.codes),
        ("--itemic", args.itemic),
        ("--cache-dir", args.cache_dir),
    ]


def run_seqrec(args) -> int:
    import json
    import os
    import time

    from megarec.common.errors import ConfigError

    unknown = set(args.baselines) - set(BASELINES)
    if unknown:
        raise ConfigError(f"unknown baseline(s) {sorted(unknown)}; choose from {', '.join(BASELINES)}")
    if args.hf_dir and not args.codes:
        raise ConfigError("--hf-dir needs --codes (the codes table of the dataset's items)")
    if not args.baselines and not args.hf_dir:
        raise ConfigError("nothing to run: give --baselines and/or --hf-dir")
    check_out_dir(args.out, force=args.force, inputs=_inputs(args))
    import torch

    from megarec.common.atomic import atomic_write_text
    from megarec.common.tables import format_table
    from megarec.eval.seqrec_data import load_seqrec

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_seqrec(args.dataset, domain=args.domain, cache_dir=args.cache_dir, seed=args.seed)
    print(f"{args.dataset}: {data.num_users} users, {data.num_items} items, {data.num_interactions} interactions")
    results: dict = {
        "dataset": data.summary(),
        "protocol": {
            "split": "leave-one-out (last = test, second-last = validation)",
            "ranking": "full, history excluded",
            "metrics": ["recall@5", "ndcg@5", "recall@10", "ndcg@10"],
        },
        "models": {},
    }
    from megarec.eval.seed_stats import aggregate_runs, budget_from_files, format_mean_std

    models = args.hf_dir or []
    seeds = [int(x) for x in args.seeds] if args.seeds else [args.seed]
    budget = args.time_budget
    if args.time_budget_from:
        budget = budget_from_files(args.time_budget_from, max(1, len(models)))
        print(f"time budget per baseline run: {budget:.1f}s (from {len(args.time_budget_from)} stage records)")
    results["time_budget_s"] = budget
    for name in args.baselines:
        t0 = time.perf_counter()
        runs = []
        for seed in seeds if name != "pop" else [args.seed]:
            t1 = time.perf_counter()
            if name == "pop":
                from megarec.eval.baselines.pop import PopRecommender
                from megarec.eval.seqrec_eval import evaluate_full_ranking

                pop = PopRecommender(data.num_items).fit(data.train_sequences())
                res = {
                    split: evaluate_full_ranking(pop.score, *data.split_inputs(split), data.num_items)
                    for split in ("valid", "test")
                }
            else:
                from megarec.eval.baselines.train import SeqTrainConfig, train_sequential

                cfg = SeqTrainConfig(
                    hidden=args.hidden,
                    layers=args.layers,
                    heads=args.heads,
                    max_len=args.max_len,
                    dropout=args.dropout,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    patience=args.patience,
                    time_budget_s=budget,
                    seed=seed,
                )
                res = train_sequential(name, data, cfg)
                res.pop("model")
            res["seed"] = seed
            res["seconds"] = time.perf_counter() - t1
            runs.append(res)
            print(f"{name} (seed {seed}): test ndcg@10 {res['test']['ndcg@10']:.4f} ({res['seconds']:.1f}s)")
        results["models"][name] = aggregate_runs(runs, seconds=time.perf_counter() - t0)
    if models:
        from megarec.common.itemic import read_codes_table
        from megarec.eval.hf_model import load_hf_model
        from megarec.eval.seqrec_generative import evaluate_generative

        t0 = time.perf_counter()
        codes = read_codes_table(args.codes).as_dict()
        runs = []
        for path in models:
            t1 = time.perf_counter()
            loaded = load_hf_model(path, itemic=args.itemic)
            test = evaluate_generative(
                loaded,
                data,
                codes,
                num_beams=args.num_beams,
                max_history=args.max_history,
                batch_size=args.eval_batch_size,
                lang=args.lang,
                max_users=args.max_eval_users,
                seed=args.seed,
                prompt=args.prompt,
            )
            runs.append({"test": test, "model": os.path.abspath(path), "seconds": time.perf_counter() - t1})
            print(f"megarec ({path}): test ndcg@10 {test['ndcg@10']:.4f} ({runs[-1]['seconds']:.1f}s)")
        agg = aggregate_runs(runs, seconds=time.perf_counter() - t0)
        agg.update(num_beams=args.num_beams, max_history=args.max_history, prompt=args.prompt, model=runs[0]["model"])
        for extra in ("mean_ranked_items", "users", "coverage"):
            agg["test"][extra] = float(sum(r["test"][extra] for r in runs) / len(runs))
        results["models"]["megarec"] = agg
    cols = ["recall@5", "ndcg@5", "recall@10", "ndcg@10"]
    rows = [[name] + [format_mean_std(r, c) for c in cols] for name, r in results["models"].items()]
    table = format_table(["model"] + cols, rows)
    print(table)
    results["table"] = table
    with staged_dir(args.out, force=args.force, inputs=_inputs(args)) as stage:
        atomic_write_text(os.path.join(stage, "results.json"), json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {os.path.join(args.out, 'results.json')}")
    return 0
