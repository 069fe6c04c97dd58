"""`megarec evaluate`: the RecIF-Bench runner over a built data directory and an HF checkpoint."""

from __future__ import annotations

import argparse

from megarec.common.cli import add_renamed_flag
from megarec.common.dtypes import DTYPE_CHOICES
from megarec.common.outdir import check_out_dir, has_entry

# evaluate resumes in its own --out: a directory with tasks/ holds an earlier evaluation
OWN_OUTPUT = has_entry("tasks")


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="RecIF-Bench evaluation of an HF checkpoint (rec, label prediction, text tasks, perplexity).",
        description="Evaluate a megarec HF checkpoint on the RecIF-Bench tasks of a data directory built by "
        "`megarec data build`. Recommendation tasks: trie-constrained beam search (beam = k) with "
        "pass@k, position-1 pass@k, recall@k, NDCG@k; label prediction: AUC of "
        "p(yes)/(p(yes)+p(no)) of the first answer token; text tasks: a judge (offline: a labelled "
        "lexical-overlap fallback). Finished tasks are kept in OUT/tasks/ and skipped on rerun.",
    )
    p.add_argument("--hf-dir", required=True, help="HF checkpoint directory with tokenizer and itemic.json.")
    add_renamed_flag(p, "--hf-dir", "--model")
    p.add_argument("--data", required=True, help="Data directory from `megarec data build` (or an eval JSONL file).")
    p.add_argument(
        "--out",
        required=True,
        help="Output directory (results.json, report.md, plots, tasks/): missing, empty, or an earlier "
        "evaluation's (finished tasks are reused); see --force.",
    )
    p.add_argument("--tasks", type=_csv, default=[], help="Comma-separated tasks (default: every task in the data).")
    p.add_argument("--split", default="test", help="Which sft/<split>.jsonl to evaluate (test or valid).")
    p.add_argument("--codes", default=None, help="Codes table (default: DATA/codes.csv).")
    p.add_argument("--itemic", default=None, help="itemic.json (default: MODEL/itemic.json).")
    p.add_argument("--num-beams", type=int, default=32, help="Beam width of recommendation decoding.")
    p.add_argument("--ks", type=_ints, default=[1, 5, 10, 32], help="Cut-offs k of the ranking metrics (<= beam).")
    p.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="Prompts per forward/beam-search batch (KV memory grows with batch x beams x prompt length).",
    )
    p.add_argument("--max-samples", type=int, default=None, help="Seeded subset of at most this many samples per task.")
    p.add_argument("--max-new-tokens", type=int, default=96, help="Generation length of text tasks.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the sample subset.")
    p.add_argument(
        "--judge",
        choices=["lexical", "openai"],
        default="lexical",
        help="Text-task judge: lexical-overlap fallback (offline) or an OpenAI-compatible LLM endpoint.",
    )
    p.add_argument(
        "--judge-url", default=None, help="Base URL of the OpenAI-compatible judge, e.g. http://host:8000/v1."
    )
    p.add_argument("--judge-model", default=None, help="Model name served by the judge endpoint.")
    p.add_argument(
        "--judge-api-key-env",
        default="OPENAI_API_KEY",
        help="Environment variable holding the judge's API key (if it needs one).",
    )
    p.add_argument("--general", default=None, help="Text file for held-out general-domain perplexity.")
    p.add_argument("--ppl-window", type=int, default=512, help="Perplexity window (tokens).")
    p.add_argument("--ppl-max-tokens", type=int, default=None, help="Use at most this many tokens of --general.")
    p.add_argument(
        "--lm-eval-tasks",
        type=_csv,
        default=[],
        help="lm-evaluation-harness tasks (run only when the lm_eval package is importable).",
    )
    p.add_argument("--lm-eval-limit", type=int, default=None, help="Examples per lm-eval task.")
    p.add_argument(
        "--dtype", choices=list(DTYPE_CHOICES), default="auto", help="Model dtype; auto = bf16 with CUDA, fp32 on CPU."
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    p.add_argument("--overwrite", action="store_true", help="Recompute tasks already finished in OUT/tasks/.")
    p.add_argument(
        "--force",
        action="store_true",
        help="Write into a non-empty --out that holds no earlier evaluation: results.json, report.md, "
        "tasks.png and tasks/ are written there, nothing else in it is touched.",
    )
    p.set_defaults(func=run)


def _inputs(args) -> list[tuple[str, str | None]]:
    return [
        ("--hf-dir", args.hf_dir),
        ("--data", args.data),
        ("--codes", args.codes),
        ("--itemic", args.itemic),
        ("--general", args.general),
    ]


def run(args) -> int:
    import os

    check_out_dir(
        args.out, force=args.force, inputs=_inputs(args), own=OWN_OUTPUT, hint="pass --force to write into it anyway"
    )
    from megarec.eval.recif.runner import EvalOptions, run_evaluation

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    opts = EvalOptions(
        model=args.hf_dir,
        data=args.data,
        out=args.out,
        tasks=args.tasks,
        split=args.split,
        codes=args.codes,
        itemic=args.itemic,
        num_beams=args.num_beams,
        ks=args.ks,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        judge=args.judge,
        judge_url=args.judge_url,
        judge_model=args.judge_model,
        judge_api_key_env=args.judge_api_key_env,
        general=args.general,
        ppl_window=args.ppl_window,
        ppl_max_tokens=args.ppl_max_tokens,
        lm_eval_tasks=args.lm_eval_tasks,
        lm_eval_limit=args.lm_eval_limit,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    run_evaluation(opts)
    print(f"wrote {os.path.join(args.out, 'results.json')} and {os.path.join(args.out, 'report.md')}")
    return 0
