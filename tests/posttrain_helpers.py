"""Helpers shared by the post-training tests: the tiny next-item (Rec-RL) task."""

from __future__ import annotations

import numpy as np

import posttrain_tiny as tiny

# The real items of a 2-layer × 4-code itemic vocabulary (`tiny.expand(base, out, 2, 4, ...)`).
REC_ITEMS = {f"it{k}": c for k, c in enumerate([(0, 0), (0, 1), (1, 2), (2, 3), (3, 0), (3, 3)])}


def write_rec_task(d, prompts: str) -> None:
    """`d/codes.parquet` (the codes of REC_ITEMS) and `d/<prompts>`: one prompt per user u, whose next item
    is it{u % 6}."""
    from megarec.common.itemic import write_codes_table

    write_codes_table(
        str(d / "codes.parquet"), np.array(list(REC_ITEMS), dtype=object), np.array(list(REC_ITEMS.values()))
    )
    tiny.write_jsonl(
        str(d / prompts),
        [tiny.chat_row(f"recommend next item for user{u}", target_item_ids=[f"it{u % 6}"]) for u in range(6)],
    )
