"""RL prompts: the SFT recommendation samples of training users without the assistant turn, each with
its target item set (reward 1 when a generated item is in it)."""

from __future__ import annotations

from typing import Iterable, Iterator

from megarec.data.tasks.context import SFT_TASKS

RL_TASKS = tuple(t for t in SFT_TASKS if t.endswith("_rec"))


def is_rec_task(task: str) -> bool:
    """The 5 recommendation tasks (per-domain next-item rec, label-conditional, interactive)."""
    return task.endswith("_rec")


def rl_prompts(sft_samples: Iterable[dict]) -> Iterator[dict]:
    for s in sft_samples:
        md = s["metadata"]
        if not is_rec_task(md["task"]) or not md.get("target_item_ids"):
            continue
        messages = [m for m in s["messages"] if m["role"] != "assistant"]
        yield {"messages": messages, "metadata": {**md, "targets": list(md["target_item_ids"])}}
