"""Orchestration of `megarec evaluate`: load the model once, run each requested task, save its result to
`OUT/tasks/<task>.json` as soon as it is done (a rerun with the same settings skips finished tasks), then
write results.json, report.md and the plots."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field

from megarec.common.atomic import atomic_write_text
from megarec.common.errors import ConfigError


@dataclass
class EvalOptions:
    model: str
    data: str
    out: str
    tasks: list[str] = field(default_factory=list)  # empty = every task present in the data
    split: str = "test"
    codes: str | None = None
    itemic: str | None = None
    num_beams: int = 32
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 32])
    batch_size: int = 4
    max_samples: int | None = None
    max_new_tokens: int = 96
    seed: int = 0
    judge: str = "lexical"
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    general: str | None = None
    ppl_window: int = 512
    ppl_max_tokens: int | None = None
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int | None = None
    dtype: str = "float32"
    overwrite: bool = False

    def validate(self) -> None:
        if self.num_beams < 1:
            raise ConfigError("--num-beams must be >= 1")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError("--ks must be positive integers")
        if max(self.ks) > self.num_beams:
            raise ConfigError(f"largest k ({max(self.ks)}) exceeds the beam width ({self.num_beams}): beam = k")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError("--max-samples must be >= 1")


def _fingerprint(opts: EvalOptions, task: str, kind: str, judge_desc: str) -> str:
    keys = {
        "model": os.path.abspath(opts.model),
        "data": os.path.abspath(opts.data),
        "split": opts.split,
        "codes": opts.codes,
        "task": task,
        "max_samples": opts.max_samples,
        "seed": opts.seed,
    }
    if kind == "rec":
        keys.update(num_beams=opts.num_beams, ks=sorted(opts.ks))
    if kind == "text":
        keys.update(judge=judge_desc, max_new_tokens=opts.max_new_tokens)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _load_done(path: str, fp: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return saved.get("result") if saved.get("fingerprint") == fp else None


def run_evaluation(opts: EvalOptions, log=print) -> dict:
    """Run every task (resuming finished ones); returns the results dict written to results.json."""
    from megarec.eval.hf_model import load_hf_model
    from megarec.eval.recif import report
    from megarec.eval.recif.general import perplexity, run_lm_eval
    from megarec.eval.recif.judges import make_judge
    from megarec.eval.recif.samples import load_catalogue, load_samples, subsample, task_kind

    opts.validate()
    by_task = load_samples(opts.data, opts.split)
    tasks = opts.tasks or sorted(by_task)
    missing = [t for t in tasks if t not in by_task]
    if missing:
        raise ConfigError(f"task(s) {missing} have no samples in the data (present: {', '.join(sorted(by_task))})")
    kinds = {t: task_kind(t) for t in tasks}
    judge = make_judge(opts.judge, url=opts.judge_url, model=opts.judge_model, api_key_env=opts.judge_api_key_env)
    os.makedirs(os.path.join(opts.out, "tasks"), exist_ok=True)
    loaded = load_hf_model(opts.model, itemic=opts.itemic, dtype=opts.dtype)
    catalogue = tries = None
    results: dict = {
        "model": os.path.abspath(opts.model),
        "data": os.path.abspath(opts.data),
        "split": opts.split,
        "num_beams": opts.num_beams,
        "options": asdict(opts),
        "tasks": {},
    }
    for task in tasks:
        kind = kinds[task]
        fp = _fingerprint(opts, task, kind, judge.describe())
        path = os.path.join(opts.out, "tasks", f"{task}.json")
        done = None if opts.overwrite else _load_done(path, fp)
        if done is not None:
            log(f"{task}: already done ({path}), skipped")
            results["tasks"][task] = done
            continue
        samples = subsample(by_task[task], opts.max_samples, opts.seed)
        t0 = time.perf_counter()
        if kind == "rec":
            from megarec.eval.recif.rec_tasks import build_tries, evaluate_rec_task

            if catalogue is None:
                catalogue = load_catalogue(opts.data, opts.codes)
                tries = build_tries(catalogue, loaded.layout)
            res = evaluate_rec_task(
                loaded,
                samples,
                catalogue,
                tries,
                num_beams=opts.num_beams,
                ks=sorted(opts.ks),
                batch_size=opts.batch_size,
            )
        elif kind == "label":
            from megarec.eval.recif.label_task import evaluate_label_task

            res = evaluate_label_task(loaded, samples, batch_size=opts.batch_size)
        else:
            from megarec.eval.recif.text_tasks import evaluate_text_task

            res = evaluate_text_task(
                loaded, samples, judge, max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size
            )
        res["seconds"] = time.perf_counter() - t0
        atomic_write_text(path, json.dumps({"fingerprint": fp, "result": res}, indent=1, default=float) + "\n")
        name, value = report.headline(res)
        log(
            f"{task}: {name} = {'n/a' if value is None else f'{value:.4f}'} ({res['n']} samples, {res['seconds']:.1f}s)"
        )
        results["tasks"][task] = res
    general: dict = {}
    if opts.general:
        general["perplexity"] = perplexity(loaded, opts.general, window=opts.ppl_window, max_tokens=opts.ppl_max_tokens)
        log(f"general: perplexity {general['perplexity']['perplexity']:.3f}")
    if opts.lm_eval_tasks:
        general["lm_eval"] = run_lm_eval(opts.model, opts.lm_eval_tasks, limit=opts.lm_eval_limit)
    results["general"] = general
    results["plots"] = report.write_plots(results, opts.out)
    summary = {t: {k: v for k, v in r.items() if k != "samples"} for t, r in results["tasks"].items()}
    atomic_write_text(
        os.path.join(opts.out, "results.json"),
        json.dumps({**results, "tasks": summary}, indent=2, default=float) + "\n",
    )
    atomic_write_text(os.path.join(opts.out, "report.md"), report.render_markdown(results) + "\n")
    return results
