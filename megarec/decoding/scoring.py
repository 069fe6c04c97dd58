"""Teacher-forced scoring: log p(item tokens | prompt) for given items, the exhaustive reference that beam
search approximates (and a way to rank a small candidate set directly)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megarec.common.itemic import ItemicLayout
from megarec.decoding.batching import left_pad, model_device, pad_token_id_for, with_item_begin


def score_items(
    model,
    prompt_ids: Sequence[int],
    codes_list: Sequence[Sequence[int]],
    layout,
    *,
    score_end: bool = False,
    batch_size: int = 64,
) -> list[float]:
    """log p(c1..cL [, <|sid_end|>] | prompt, <|sid_begin|>) for every code tuple, by one forward pass per
    batch of full sequences (prompt + item)."""
    layout = ItemicLayout.coerce(layout)
    prompt = with_item_begin([int(t) for t in prompt_ids], layout.sid_begin_id)
    pad = pad_token_id_for(model)
    device = model_device(model)
    out: list[float] = []
    with torch.inference_mode():
        for s in range(0, len(codes_list), batch_size):
            items = [
                layout.code_ids(c) + ([layout.sid_end_id] if score_end else []) for c in codes_list[s : s + batch_size]
            ]
            seqs = [prompt + it for it in items]
            ids, attn = left_pad(seqs, pad, device)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()
            n = len(items[0])
            logp = torch.log_softmax(logits[:, -n - 1 : -1], dim=-1)  # predictions for the n item tokens
            tgt = ids[:, -n:]
            out.extend(logp.gather(-1, tgt[..., None]).squeeze(-1).sum(-1).tolist())
    return out
