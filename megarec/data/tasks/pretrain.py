"""Pre-training samples ({"segments": [{"type": "text", "text": ...}]}): item↔caption alignment,
sequential behaviour per domain, and interleaved user persona (profile + behaviour + searches)."""

from __future__ import annotations

from typing import Iterator

from megarec.data.tasks.context import TaskContext
from megarec.data.tasks.split import SEARCHES, TrainUser


def _sample(text: str, **metadata) -> dict:
    return {"segments": [{"type": "text", "text": text}], "metadata": metadata}


def item_caption_samples(ctx: TaskContext, item_ids: list[str]) -> Iterator[dict]:
    """Both directions for every item with a caption: item → caption and caption → item."""
    for item_id in item_ids:
        caption = ctx.items[item_id].caption
        if not caption:
            continue
        item = ctx.item(item_id)
        rng = ctx.rng("item_caption", item_id)
        yield _sample(
            ctx.templates.render("pretrain.item_caption", rng, item=item, caption=caption),
            task="item_caption",
            item_ids=[item_id],
        )
        yield _sample(
            ctx.templates.render("pretrain.caption_item", rng, item=item, caption=caption),
            task="caption_item",
            item_ids=[item_id],
        )


def sequence_windows(length: int, size: int, every: bool) -> list[tuple[int, int]]:
    """[start, end) windows of at most `size` items, cut from the end of a history of `length` items: only the
    most recent one, or (`every`) consecutive ones back to the first item, oldest first. A leftover of a single
    item at the start is dropped (it would be a sequence without a next item)."""
    out, end = [], length
    while end >= 2:
        start = max(0, end - size)
        out.append((start, end))
        if not every:
            break
        end = start
    return out[::-1]


def sequence_samples(ctx: TaskContext, users: list[TrainUser]) -> Iterator[dict]:
    """Behaviour sequences per user and domain: the most recent `max_sequence_items` items, or with
    `sequence_windows: all` every window of the history."""
    every = ctx.cfg.sequence_windows == "all"
    for tu in users:
        for domain, hist in sorted(tu.histories.items()):
            for start, end in sequence_windows(len(hist), ctx.cfg.max_sequence_items, every):
                # the most recent window keeps the key (and template draw) of the one-window build
                key = ("user_sequence", tu.user.user_id, domain) + ((end,) if end < len(hist) else ())
                text = ctx.templates.render(
                    "pretrain.sequence",
                    ctx.rng(*key),
                    domain=ctx.templates.domain(domain),
                    items=ctx.items_text(x.item_id for x in hist[start:end]),
                )
                yield _sample(
                    text, task="user_sequence", user_id=tu.user.user_id, domain=domain, max_pos={domain: end - 1}
                )


def persona_samples(ctx: TaskContext, users: list[TrainUser]) -> Iterator[dict]:
    """Profile, then behaviour across domains and searches interleaved in time order."""
    t = ctx.templates
    for tu in users:
        rng = ctx.rng("user_persona", tu.user.user_id)
        events = []
        for domain, hist in tu.histories.items():
            for pos, ev in enumerate(hist):
                events.append((ev.ts, 0, domain, pos, ev))
        for pos, s in enumerate(tu.searches):
            events.append((s.ts, 1, SEARCHES, pos, s))
        events.sort(key=lambda e: (e[0], e[1], e[2], e[3]))
        events = events[-ctx.cfg.max_persona_events :]
        if len(events) < 2 and not tu.user.profile:
            continue
        parts = []
        if tu.user.profile:
            parts.append(t.render("pretrain.persona_header", rng, profile=tu.user.profile))
        max_pos: dict[str, int] = {}
        for _, _, domain, pos, ev in events:
            max_pos[domain] = max(max_pos.get(domain, -1), pos)
            if domain == SEARCHES:
                parts.append(
                    t.render("pretrain.persona_search", rng, query=ev.query, items=ctx.items_text(ev.item_ids))
                )
            else:
                label = ev.labels[0] if ev.labels else "none"
                parts.append(
                    t.render(
                        "pretrain.persona_event",
                        rng,
                        domain=t.domain(domain),
                        action=t.past(label),
                        item=ctx.item(ev.item_id),
                    )
                )
        yield _sample(" ".join(parts), task="user_persona", user_id=tu.user.user_id, max_pos=max_pos)
