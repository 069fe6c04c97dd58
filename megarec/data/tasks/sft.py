"""SFT chat samples ({"messages": [...], "metadata": {...}}) for the 8 RecIF-Bench tasks.

Training samples come from the training view of each user (several seeded cut points per user and
domain); evaluation samples come from the held-out cases of the split. Every sample's metadata names
the task, the user and domain, the target item ids (for recommendation metrics) or the reference text /
answer, and the positions it used (for the leakage check).
"""

from __future__ import annotations

from typing import Iterator, Optional

from megarec.data.tasks.context import POSITIVE_LABELS, TaskContext, rec_task_name
from megarec.data.tasks.split import SEARCHES, EvalCase, SearchCase, TrainUser
from megarec.rawdata.schema import Interaction, User


def _cut_points(ctx: TaskContext, n: int, k: int, *key) -> list[int]:
    """Up to samples_per_user positions i (context = hist[:i], targets = hist[i:i+k]); the latest is kept."""
    lo, hi = ctx.cfg.min_history, n - k
    if hi < lo:
        return []
    candidates = list(range(lo, hi + 1))
    rng = ctx.rng("cut", *key)
    rest = candidates[:-1]
    picked = rng.sample(rest, min(len(rest), ctx.cfg.samples_per_user - 1)) if ctx.cfg.samples_per_user > 1 else []
    return sorted(picked + [candidates[-1]])


def _train_md(task: str, user: User, domain: str, max_pos: dict, **extra) -> dict:
    return {"task": task, "split": "train", "user_id": user.user_id, "domain": domain, "max_pos": max_pos, **extra}


# --- recommendation ----------------------------------------------------------------------------------


def rec_sample(
    ctx: TaskContext, user: User, domain: str, context: list[Interaction], targets: list[Interaction], rng_key: tuple
) -> Optional[dict]:
    if not context or not targets:
        return None
    t = ctx.templates
    rng = ctx.rng("rec", *rng_key)
    prompt = t.render("sft.rec.user", rng, domain=t.domain(domain), history=ctx.history(context))
    answer = t.render("sft.rec.assistant", rng, targets=ctx.items_text(x.item_id for x in targets))
    return {
        "messages": ctx.chat(prompt, answer),
        "metadata": {"task": rec_task_name(domain), "target_item_ids": [x.item_id for x in targets]},
    }


def label_conditional_sample(
    ctx: TaskContext, domain: str, context: list[Interaction], target: Interaction, rng_key: tuple
) -> Optional[dict]:
    labels = [lab for lab in target.labels if lab in POSITIVE_LABELS]
    if not context or not labels:
        return None
    t = ctx.templates
    rng = ctx.rng("label_conditional_rec", *rng_key)
    label = labels[rng.randrange(len(labels))]
    prompt = t.render(
        "sft.label_conditional_rec.user",
        rng,
        domain=t.domain(domain),
        action=t.action(label),
        history=ctx.history(context),
    )
    answer = t.render("sft.label_conditional_rec.assistant", rng, targets=ctx.item(target.item_id))
    return {
        "messages": ctx.chat(prompt, answer),
        "metadata": {"task": "label_conditional_rec", "label": label, "target_item_ids": [target.item_id]},
    }


def label_prediction_sample(
    ctx: TaskContext, domain: str, context: list[Interaction], target: Interaction, rng_key: tuple
) -> Optional[dict]:
    vocab = ctx.informative_labels.get(domain, ())
    if not context or not vocab:
        return None
    t = ctx.templates
    rng = ctx.rng("label_prediction", *rng_key)
    present = [lab for lab in vocab if lab in target.labels]
    absent = [lab for lab in vocab if lab not in target.labels]
    positive = bool(present) and (not absent or rng.random() < 0.5)
    pool = present if positive else absent
    label = pool[rng.randrange(len(pool))]
    prompt = t.render(
        "sft.label_prediction.user",
        rng,
        domain=t.domain(domain),
        action=t.action(label),
        item=ctx.item(target.item_id),
        history=ctx.history(context),
    )
    answer = t.answer(positive)
    return {
        "messages": ctx.chat(prompt, t.render("sft.label_prediction.assistant", rng, answer=answer)),
        "metadata": {
            "task": "label_prediction",
            "label": label,
            "answer": answer,
            "answer_choices": {"positive": t.answer(True), "negative": t.answer(False)},
            "target_item_ids": [target.item_id],
        },
    }


def explanation_sample(
    ctx: TaskContext, domain: str, context: list[Interaction], target: Interaction, rng_key: tuple
) -> Optional[dict]:
    if not target.explanation:
        return None
    t = ctx.templates
    rng = ctx.rng("explanation", *rng_key)
    prompt = t.render(
        "sft.explanation.user",
        rng,
        domain=t.domain(domain),
        item=ctx.item(target.item_id),
        history=ctx.history(context),
    )
    return {
        "messages": ctx.chat(prompt, t.render("sft.explanation.assistant", rng, explanation=target.explanation)),
        "metadata": {"task": "explanation", "reference": target.explanation, "target_item_ids": [target.item_id]},
    }


def interactive_sample(
    ctx: TaskContext,
    user: User,
    domain: str,
    context: list[Interaction],
    query: str,
    target_ids: tuple[str, ...],
    rng_key: tuple,
) -> Optional[dict]:
    if not target_ids:
        return None
    t = ctx.templates
    rng = ctx.rng("interactive_rec", *rng_key)
    prompt = t.render(
        "sft.interactive_rec.user",
        rng,
        domain=t.domain(domain),
        query=query,
        profile=user.profile or "",
        history=ctx.history(context),
    )
    answer = t.render("sft.interactive_rec.assistant", rng, targets=ctx.items_text(target_ids))
    return {
        "messages": ctx.chat(prompt, answer),
        "metadata": {"task": "interactive_rec", "query": query, "target_item_ids": list(target_ids)},
    }


def item_understanding_sample(ctx: TaskContext, item_id: str) -> Optional[dict]:
    caption = ctx.items[item_id].caption
    if not caption:
        return None
    t = ctx.templates
    rng = ctx.rng("item_understanding", item_id)
    prompt = t.render("sft.item_understanding.user", rng, item=ctx.item(item_id))
    return {
        "messages": ctx.chat(prompt, t.render("sft.item_understanding.assistant", rng, caption=caption)),
        "metadata": {"task": "item_understanding", "reference": caption, "target_item_ids": [item_id]},
    }


# --- training ------------------------------------------------------------------------------------------


def train_samples(ctx: TaskContext, users: list[TrainUser]) -> Iterator[dict]:
    """Training samples of the user-derived tasks (all but item understanding)."""
    k = ctx.cfg.rec_targets
    for tu in users:
        uid = tu.user.user_id
        for domain, hist in sorted(tu.histories.items()):
            for i in _cut_points(ctx, len(hist), k, "rec", uid, domain):
                s = rec_sample(ctx, tu.user, domain, hist[:i], hist[i : i + k], (uid, domain, i))
                if s:
                    s["metadata"].update(_train_md(s["metadata"]["task"], tu.user, domain, {domain: i + k - 1}))
                    yield s
            positive = [
                i
                for i in range(ctx.cfg.min_history, len(hist))
                if any(lab in POSITIVE_LABELS for lab in hist[i].labels)
            ]
            for i in _pick(ctx, positive, "lcr", uid, domain):
                s = label_conditional_sample(ctx, domain, hist[:i], hist[i], (uid, domain, i))
                if s:
                    s["metadata"].update(_train_md("label_conditional_rec", tu.user, domain, {domain: i}))
                    yield s
            for i in _pick(ctx, list(range(ctx.cfg.min_history, len(hist))), "lp", uid, domain):
                s = label_prediction_sample(ctx, domain, hist[:i], hist[i], (uid, domain, i))
                if s:
                    s["metadata"].update(_train_md("label_prediction", tu.user, domain, {domain: i}))
                    yield s
            explained = [i for i in range(1, len(hist)) if hist[i].explanation]
            for i in _pick(ctx, explained, "expl", uid, domain):
                s = explanation_sample(ctx, domain, hist[:i], hist[i], (uid, domain, i))
                if s:
                    s["metadata"].update(_train_md("explanation", tu.user, domain, {domain: i}))
                    yield s
        for pos, search in enumerate(tu.searches):
            domain = ctx.items[search.item_ids[0]].domain
            hist = tu.histories.get(domain, [])
            context = [x for x in hist if x.ts < search.ts]
            s = interactive_sample(ctx, tu.user, domain, context, search.query, search.item_ids, (uid, pos))
            if s:
                max_pos = {SEARCHES: pos}
                if context:
                    max_pos[domain] = len(context) - 1
                s["metadata"].update(_train_md("interactive_rec", tu.user, domain, max_pos))
                yield s


def _pick(ctx: TaskContext, positions: list[int], *key) -> list[int]:
    if len(positions) <= ctx.cfg.samples_per_user:
        return positions
    return sorted(ctx.rng("pick", *key).sample(positions, ctx.cfg.samples_per_user))


# --- evaluation ------------------------------------------------------------------------------------------


def eval_samples(ctx: TaskContext, cases: list[EvalCase], search_cases: list[SearchCase]) -> Iterator[dict]:
    """Evaluation samples of every user-derived task from the held-out cases."""
    for c in cases:
        uid = c.user.user_id
        base = {"split": c.split, "user_id": uid, "domain": c.domain, "target_pos": c.target_pos}
        key = (c.split, uid, c.domain)
        samples = [
            rec_sample(ctx, c.user, c.domain, c.context, c.targets, key),
            label_conditional_sample(ctx, c.domain, c.context, c.targets[0], key),
            label_prediction_sample(ctx, c.domain, c.context, c.targets[0], key),
            explanation_sample(ctx, c.domain, c.context, c.targets[0], key),
        ]
        for s in samples:
            if s:
                s["metadata"].update(base)
                yield s
    for c in search_cases:
        uid = c.user.user_id
        s = interactive_sample(
            ctx, c.user, c.domain, c.context, c.search.query, c.search.item_ids, (c.split, uid, c.search_pos)
        )
        if s:
            s["metadata"].update(
                {"split": c.split, "user_id": uid, "domain": c.domain, "pos_key": SEARCHES, "target_pos": c.search_pos}
            )
            yield s


def item_understanding_samples(ctx: TaskContext, item_ids: list[str], split: str) -> Iterator[dict]:
    for item_id in item_ids:
        s = item_understanding_sample(ctx, item_id)
        if s:
            s["metadata"]["split"] = split
            yield s
