"""Evaluation samples and the item catalogue of a built data directory (`megarec data build --out DIR`).

Contract (see docs/eval.md): `DIR/sft/<split>.jsonl` rows are `{"messages": [..., final assistant turn],
"metadata": {"task": ..., ...}}`; the prompt is every message before the final assistant turn, the
reference is that turn. Recommendation tasks carry `target_item_ids` (ordered, first = next item) and
`domain`; label prediction carries `answer` and `answer_choices` {positive, negative}; text tasks carry
`reference`. `DIR/codes.csv` (item_id,c1..cL) and optionally `DIR/items.jsonl` (item_id, domain) give
the catalogue; `DIR/sft/train.jsonl` targets, when present, give item popularity for collisions.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field

from megarec.common.errors import ConfigError, DataError

REC_TASKS = ("short_video_rec", "ad_rec", "product_rec", "label_conditional_rec", "interactive_rec")
LABEL_TASKS = ("label_prediction",)
TEXT_TASKS = ("item_understanding", "explanation")
ALL_TASKS = REC_TASKS + LABEL_TASKS + TEXT_TASKS


def task_kind(task: str) -> str:
    """ "rec", "label" or "text" (other `<domain>_rec` names count as recommendation tasks)."""
    if task in LABEL_TASKS:
        return "label"
    if task in TEXT_TASKS:
        return "text"
    if task in REC_TASKS or task.endswith("_rec"):
        return "rec"
    raise ConfigError(f"unknown task {task!r}")


@dataclass
class Catalogue:
    codes: dict[str, tuple[int, ...]]
    domains: dict[str, str] = field(default_factory=dict)
    popularity: Counter = field(default_factory=Counter)


def _read_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {i}: invalid JSON ({e})") from None


def load_samples(data_dir: str, split: str = "test") -> dict[str, list[dict]]:
    """task → samples (file order) from `DIR/sft/<split>.jsonl` (or `data_dir` itself when it is a file)."""
    path = data_dir if os.path.isfile(data_dir) else os.path.join(data_dir, "sft", f"{split}.jsonl")
    if not os.path.isfile(path):
        raise DataError(f"{path}: evaluation samples not found (build them with `megarec data build`)")
    by_task: dict[str, list[dict]] = {}
    for row, rec in _read_jsonl(path):
        md = rec.get("metadata") if isinstance(rec, dict) else None
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if not isinstance(md, dict) or not isinstance(md.get("task"), str):
            raise DataError(f"{path}: row {row}: field 'metadata.task' missing")
        if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1].get("role") != "assistant":
            raise DataError(f"{path}: row {row}: field 'messages' must end with the reference assistant turn")
        rec = {**rec, "_row": row, "_path": path}
        by_task.setdefault(md["task"], []).append(rec)
    return by_task


def subsample(samples: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded subset of n samples in file order (all when n is None)."""
    if n is None or n >= len(samples):
        return samples
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]


def load_catalogue(data_dir: str, codes_path: str | None = None) -> Catalogue:
    from megarec.common.itemic import read_codes_table

    base = data_dir if os.path.isdir(data_dir) else os.path.dirname(data_dir)
    codes_path = codes_path or os.path.join(base, "codes.csv")
    codes = read_codes_table(codes_path).as_dict()
    domains: dict[str, str] = {}
    items_path = os.path.join(base, "items.jsonl")
    if os.path.isfile(items_path):
        for _, rec in _read_jsonl(items_path):
            if isinstance(rec, dict) and rec.get("item_id") is not None and rec.get("domain"):
                domains[str(rec["item_id"])] = str(rec["domain"])
    pop: Counter = Counter()
    train = os.path.join(base, "sft", "train.jsonl")
    if os.path.isfile(train):
        for _, rec in _read_jsonl(train):
            for it in (rec.get("metadata") or {}).get("target_item_ids") or ():
                pop[str(it)] += 1
    return Catalogue(codes, domains, pop)


def prompt_messages(sample: dict) -> list[dict]:
    """Messages before the final (reference) assistant turn."""
    return sample["messages"][:-1]


def where(sample: dict) -> str:
    return f"{sample['_path']}: row {sample['_row']}"
