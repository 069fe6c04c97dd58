"""`megarec data build`: source → validated log → split → pre-training / SFT / RL files + tables.

Output directory layout::

    items.jsonl            item table (item_id, domain, caption, codes)
    codes.csv              item_id,c1..cL (the codes the samples were rendered with)
    pretrain/train.jsonl   {"segments": [...], "metadata": {...}}
    sft/train.jsonl        {"messages": [...], "metadata": {...}} (all 8 tasks, shuffled with the seed)
    sft/test.jsonl         evaluation samples (and sft/valid.jsonl for leave-one-out)
    rl/train.jsonl         prompts of the 5 recommendation tasks with target item sets
    rl/valid.jsonl         the same for the validation targets (leave-one-out only)
    build_report.json      counts per task/file, split summary, what was dropped and why
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from dataclasses import asdict

import numpy as np

from megarec.common.errors import DataError
from megarec.common.io import write_json, write_jsonl
from megarec.common.itemic import write_codes_table
from megarec.data.placeholder_codes import placeholder_codes
from megarec.data.tasks import pretrain, sft
from megarec.data.tasks.config import BuildConfig
from megarec.data.tasks.context import TaskContext, informative_labels
from megarec.data.tasks.rl import rl_prompts
from megarec.data.tasks.split import split_log, verify_no_leakage
from megarec.data.tasks.templates import Templates
from megarec.rawdata.loo import loo_cuts
from megarec.rawdata.schema import RecLog, User

PLACEHOLDER_LAYERS = 3
PLACEHOLDER_CODEBOOK = 256


def attach_codes(log: RecLog, codes: dict[str, tuple[int, ...]]) -> RecLog:
    """Keep only items that have codes (all with the same number of layers); drop interactions and
    search results of the others, recording what went."""
    lengths = Counter(len(c) for c in codes.values())
    if len(lengths) > 1:
        raise DataError(f"codes table mixes code lengths {dict(lengths)}")
    kept = {i: it for i, it in log.items.items() if i in codes}
    for item_id in log.items.keys() - kept.keys():
        log.report.add("item without codes", f"item {item_id}")
    if len(kept) == len(log.items):
        return log
    users = []
    for u in log.users:
        hist = {}
        for d, events in u.histories.items():
            keep = [e for e in events if e.item_id in kept]
            for _ in range(len(events) - len(keep)):
                log.report.add("interaction with an item without codes", f"user {u.user_id}")
            hist[d] = keep
        searches = [s.__class__(s.query, s.ts, tuple(i for i in s.item_ids if i in kept)) for s in u.searches]
        users.append(User(u.user_id, hist, u.split, u.profile, [s for s in searches if s.item_ids]))
    return RecLog(kept, users, log.report, log.name)


def check_codes_cover(log: RecLog, codes: dict, source: str, on_error: str) -> None:
    """With `--on-error fail`, refuse codes that leave items of the log without codes: `attach_codes` would drop
    them and every interaction with them (a codes table of another item set loses most of the data)."""
    missing = sorted(log.items.keys() - codes.keys())
    if not missing or on_error != "fail":
        return
    gone = sum(e.item_id not in codes for u in log.users for events in u.histories.values() for e in events)
    total = sum(len(events) for u in log.users for events in u.histories.values())
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    raise DataError(
        f"{source}: no codes for {len(missing)} of {len(log.items)} items ({shown}), which would drop "
        f"{gone} of {total} interactions; give the codes table of these items, or pass --on-error drop to "
        "build without them"
    )


def _holdout(item_ids: list[str], frac: float, seed: int) -> set[str]:
    def unit(i: str) -> float:
        return int.from_bytes(hashlib.blake2b(f"{seed}|caption|{i}".encode(), digest_size=8).digest(), "little") / 2**64

    return {i for i in item_ids if unit(i) < frac}


def build_tasks(log: RecLog, codes: dict[str, tuple[int, ...]], cfg: BuildConfig, default_split: str = "user") -> dict:
    """All samples in memory: {"pretrain": [...], "sft_train": [...], "sft_test": [...], "sft_valid": [...],
    "rl_train": [...], "split": Split, "holdout_items": set}."""
    cfg.validate()
    templates = Templates.load(cfg.lang)
    mode = default_split if cfg.split == "auto" else cfg.split
    # leave-one-out is cut on the raw histories (the benchmark's), before items without codes are dropped
    cuts = loo_cuts(log, lambda i: i in codes) if mode == "loo" else None
    log = attach_codes(log, codes)
    split = split_log(log, cfg, mode, cuts)
    ctx = TaskContext(cfg, templates, log.items, codes, informative_labels(tu.histories for tu in split.train))

    captioned = sorted(i for i, it in log.items.items() if it.caption)
    understanding_eval = _holdout(captioned, cfg.caption_holdout_frac, cfg.seed)
    no_caption_training = set(understanding_eval)
    if cfg.test_target_captions == "exclude":
        for c in split.cases:
            no_caption_training.update(x.item_id for x in c.targets)
        for c in split.search_cases:
            no_caption_training.update(c.search.item_ids)
    caption_train_items = [i for i in captioned if i not in no_caption_training]

    pre = list(pretrain.item_caption_samples(ctx, caption_train_items))
    pre += pretrain.sequence_samples(ctx, split.train)
    pre += pretrain.persona_samples(ctx, split.train)
    sft_train = list(sft.train_samples(ctx, split.train))
    sft_train += sft.item_understanding_samples(ctx, caption_train_items, "train")
    evals = list(sft.eval_samples(ctx, split.cases, split.search_cases))
    evals += sft.item_understanding_samples(ctx, sorted(understanding_eval), "test")
    rl = list(rl_prompts(sft_train))

    verify_no_leakage(pre + sft_train + rl, evals)
    for s in pre + sft_train:
        if s["metadata"]["task"] in ("item_caption", "caption_item", "item_understanding"):
            ids = s["metadata"].get("item_ids") or s["metadata"].get("target_item_ids")
            if set(ids) & no_caption_training:
                raise DataError(f"leak: caption of held-out item {ids} in training task {s['metadata']['task']}")

    # one shuffle per output, so that e.g. more pre-training windows do not reorder the SFT samples
    for name, samples in (("pretrain", pre), ("sft", sft_train), ("rl", rl)):
        random.Random(f"{cfg.seed}|shuffle|{name}").shuffle(samples)
    return {
        "pretrain": pre,
        "sft_train": sft_train,
        "sft_test": [s for s in evals if s["metadata"]["split"] == "test"],
        "sft_valid": [s for s in evals if s["metadata"]["split"] == "valid"],
        "rl_train": rl,
        "split": split,
        "log": log,
        "holdout_items": no_caption_training,
    }


def resolve_codes(log: RecLog, source_codes: dict | None, codes_path: str | None, seed: int) -> tuple[dict, str]:
    """Codes from a codes table, else the source's own, else deterministic placeholders (with a note)."""
    if codes_path:
        from megarec.common.itemic import read_codes_table

        return read_codes_table(codes_path).as_dict(), f"table:{codes_path}"
    if source_codes:
        return source_codes, "source"
    return placeholder_codes(
        sorted(log.items), PLACEHOLDER_LAYERS, PLACEHOLDER_CODEBOOK, seed
    ), f"placeholder-hash ({PLACEHOLDER_LAYERS}x{PLACEHOLDER_CODEBOOK}; pass --codes from the itemic tokenizer)"


def write_build(out_dir: str, built: dict, codes: dict, cfg: BuildConfig, codes_source: str, source: str) -> dict:
    log: RecLog = built["log"]
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "pretrain/train.jsonl": built["pretrain"],
        "sft/train.jsonl": built["sft_train"],
        "sft/test.jsonl": built["sft_test"],
        "rl/train.jsonl": built["rl_train"],
    }
    if built["sft_valid"]:
        files["sft/valid.jsonl"] = built["sft_valid"]
        # held-out RL prompts (the validation targets): GRPO's validation reward is measured on them
        files["rl/valid.jsonl"] = list(rl_prompts(built["sft_valid"]))
    counts = {}
    for rel, samples in files.items():
        write_jsonl(os.path.join(out_dir, rel), samples)
        counts[rel] = dict(sorted(Counter(s["metadata"]["task"] for s in samples).items()))
    item_codes = {i: codes[i] for i in log.items}
    write_jsonl(
        os.path.join(out_dir, "items.jsonl"),
        ({**it.to_record(), "codes": list(item_codes[i])} for i, it in log.items.items()),
    )
    write_codes_table(os.path.join(out_dir, "codes.csv"), list(item_codes), np.array(list(item_codes.values())))
    report = {
        "source": source,
        "codes": codes_source,
        "config": asdict(cfg),
        "items": len(log.items),
        "users": len(log.users),
        "split": built["split"].summary(),
        "caption_holdout_items": len(built["holdout_items"]),
        "samples": counts,
        "dropped": log.report.to_dict(),
    }
    write_json(os.path.join(out_dir, "build_report.json"), report)
    return report
