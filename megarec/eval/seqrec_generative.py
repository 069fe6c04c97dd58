"""The generative model on the transfer benchmark: each user's history is written as itemic tokens in a
prompt of the task builders' templates (the SFT next-item chat prompt for a post-trained model, or the
pre-training behaviour-sequence text for a stage-2 checkpoint), the model decodes items with trie-constrained
beam search over the dataset's catalogue, and the decoded code tuples become an item ranking (most popular
item first when several items share a tuple). Items already in the history are excluded from each
user's trie, as the baselines exclude them from their ranking, so every beam is an unseen item."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from megarec.common.errors import ConfigError
from megarec.eval.seqrec_data import SeqRecData
from megarec.eval.seqrec_eval import DEFAULT_KS, ranking_metrics


def rec_messages(
    history_codes: list[tuple[int, ...]], domain: str, lang: str = "en", seed: int = 0, letters=None
) -> list[dict]:
    """System + user messages of the next-item prompt (the SFT `rec` template, first variant)."""
    from megarec.common.itemic import item_string
    from megarec.data.tasks.templates import Templates

    t = Templates.load(lang)
    history = "".join(item_string(c, letters) for c in history_codes)
    user = t.render("sft.rec.user", random.Random(seed), domain=t.domain(domain), history=history)
    msgs = [{"role": "system", "content": t.system.strip()}] if t.system else []
    return msgs + [{"role": "user", "content": user}]


# chat: the SFT next-item conversation (post-trained models); sequence: the stage-2 behaviour-sequence text
# continued with the next item, the way a co-pre-trained checkpoint saw its users during training
PROMPT_KINDS = ("chat", "sequence")


def sequence_prompt(history_codes: list[tuple[int, ...]], domain: str, lang: str = "en", seed: int = 0, letters=None):
    """The pre-training behaviour-sequence text (`pretrain.sequence` template) ending after the last item."""
    from megarec.common.itemic import item_string
    from megarec.data.tasks.templates import Templates

    t = Templates.load(lang)
    items = "".join(item_string(c, letters) for c in history_codes)
    return t.render("pretrain.sequence", random.Random(seed), domain=t.domain(domain), items=items)


def generative_prompt(loaded, kind: str, history_codes, domain: str, lang: str = "en", seed: int = 0) -> str:
    """The prompt text of one user for prompt kind `kind` (see PROMPT_KINDS)."""
    letters = loaded.layout.layer_letters
    if kind == "sequence":
        return sequence_prompt(history_codes, domain, lang, seed, letters)
    if kind != "chat":
        raise ConfigError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}, got {kind!r}")
    from megarec.eval.hf_model import chat_prompt

    return chat_prompt(loaded.tokenizer, rec_messages(history_codes, domain, lang, seed, letters))


def evaluate_generative(
    loaded,
    data: SeqRecData,
    codes: dict[str, tuple[int, ...]],
    *,
    split: str = "test",
    ks=DEFAULT_KS,
    num_beams: int = 20,
    max_history: int = 20,
    batch_size: int = 8,
    lang: str = "en",
    max_users: int | None = None,
    seed: int = 0,
    exclude_history: bool = True,
    prompt: str = "chat",
) -> dict:
    """Recall@k / NDCG@k of the generative model (users without codes for their target are still counted)."""
    from megarec.decoding.beam_search import constrained_beam_search
    from megarec.decoding.trie import ItemTrie

    if prompt not in PROMPT_KINDS:
        raise ConfigError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}, got {prompt!r}")
    if num_beams < max(ks):
        raise ConfigError(f"--num-beams ({num_beams}) must be at least the largest k ({max(ks)})")
    sub = data.subset_users(max_users, seed) if max_users else data
    known = {it: tuple(codes[it]) for it in data.item_ids if it in codes}
    if not known:
        raise ConfigError("the codes table has no item of this dataset (item ids must match)")
    popularity = Counter(data.item_ids[i - 1] for s in data.train_sequences() for i in s)
    trie = ItemTrie(known, loaded.layout, popularity=popularity)
    histories, targets = sub.split_inputs(split)
    prompts = []
    for h in histories:
        hist_codes = [known[data.item_ids[i - 1]] for i in h[-max_history:] if data.item_ids[i - 1] in known]
        prompts.append(generative_prompt(loaded, prompt, hist_codes, data.domain, lang, seed))
    tries = trie
    if exclude_history:  # search only unseen items, so every user gets num_beams candidates as Pop/SASRec do
        tries = []
        for h in histories:
            seen_ids = {data.item_ids[int(i) - 1] for i in h}
            tries.append(
                ItemTrie({k: c for k, c in known.items() if k not in seen_ids}, loaded.layout, popularity=popularity)
            )
    cands = constrained_beam_search(
        loaded.model, loaded.tokenizer, prompts, tries, num_beams=num_beams, batch_size=batch_size, progress=True
    )
    top = []
    for h, cs in zip(histories, cands):
        seen = {int(i) for i in h} if exclude_history else set()
        ranked = []
        for c in cs:
            for it in c.items[:1]:
                idx = data.item_index[it]
                if idx not in seen and idx not in ranked:
                    ranked.append(idx)
        top.append(ranked)
    out = ranking_metrics(top, [int(t) for t in targets], ks)
    out["users"] = len(top)
    # beams whose item the user has already seen are dropped, so lists can be shorter than the beam
    out["mean_ranked_items"] = float(np.mean([len(r) for r in top])) if top else 0.0
    out["coverage"] = float(np.mean([data.item_ids[int(t) - 1] in known for t in targets]))
    return out
