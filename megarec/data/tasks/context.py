"""What every task builder needs: templates, item codes, seeded RNGs, and item/history rendering."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from megarec.common.itemic import item_string
from megarec.data.tasks.config import BuildConfig
from megarec.data.tasks.templates import Templates
from megarec.rawdata.schema import BEHAVIOUR_LABELS, Interaction, Item

REC_TASK_NAMES = {"video": "short_video_rec", "ad": "ad_rec", "product": "product_rec"}
POSITIVE_LABELS = tuple(lab for lab in BEHAVIOUR_LABELS if lab != "dislike")
SFT_TASKS = (
    "short_video_rec",
    "ad_rec",
    "product_rec",
    "label_conditional_rec",
    "interactive_rec",
    "label_prediction",
    "item_understanding",
    "explanation",
)


def rec_task_name(domain: str) -> str:
    """RecIF-Bench name of the next-item task of a domain (short_video_rec, ad_rec, product_rec, <d>_rec)."""
    return REC_TASK_NAMES.get(domain, f"{domain}_rec")


@dataclass
class TaskContext:
    cfg: BuildConfig
    templates: Templates
    items: dict[str, Item]
    codes: dict[str, tuple[int, ...]]
    informative_labels: dict[str, tuple[str, ...]]  # per domain: labels worth asking about

    def rng(self, *key: object) -> random.Random:
        """An RNG that depends only on the seed and the key (stable across runs and orderings)."""
        return random.Random("|".join([str(self.cfg.seed), *map(str, key)]))

    def item(self, item_id: str) -> str:
        return item_string(self.codes[item_id])

    def items_text(self, item_ids: Iterable[str]) -> str:
        return "".join(self.item(i) for i in item_ids)

    def history(self, events: Sequence[Interaction]) -> str:
        return self.items_text(x.item_id for x in events[-self.cfg.max_history :])

    def system(self) -> list[dict]:
        if self.cfg.system_prompt and self.templates.system:
            return [{"role": "system", "content": self.templates.system.strip()}]
        return []

    def chat(self, user: str, assistant: str | None) -> list[dict]:
        msgs = self.system() + [{"role": "user", "content": user}]
        if assistant is not None:
            msgs.append({"role": "assistant", "content": assistant})
        return msgs


def informative_labels(histories: Iterable[dict[str, list[Interaction]]]) -> dict[str, tuple[str, ...]]:
    """Per domain, labels that occur on some but not (almost) all interactions (5%..95%)."""
    total: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    for hist in histories:
        for domain, events in hist.items():
            total[domain] = total.get(domain, 0) + len(events)
            c = counts.setdefault(domain, {})
            for ev in events:
                for lab in ev.labels:
                    c[lab] = c.get(lab, 0) + 1
    out = {}
    for domain, n in total.items():
        keep = [lab for lab in BEHAVIOUR_LABELS if 0.0 < counts[domain].get(lab, 0) / max(n, 1) <= 0.95]
        out[domain] = tuple(keep)
    return out
