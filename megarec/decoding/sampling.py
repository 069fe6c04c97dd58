"""Constrained sampling: `generate(do_sample=True)` with the item constraint applied *before* temperature /
top-k / top-p, so a warper can never leave a row with no valid token. Every sample is a real item."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megarec.common.errors import ConfigError
from megarec.decoding.batching import (
    ItemCandidate,
    left_pad,
    model_device,
    pad_token_id_for,
    prompt_token_ids,
    with_item_begin,
)
from megarec.decoding.beam_search import _as_tries
from megarec.decoding.processor import ItemConstraintLogitsProcessor
from megarec.decoding.trie import ItemTrie


def constrained_sample(
    model,
    tokenizer,
    prompts: Sequence,
    tries: ItemTrie | Sequence[ItemTrie],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 8,
    seed: int | None = None,
) -> list[list[ItemCandidate]]:
    """Per prompt, `num_samples` sampled items (with repetition), each with the log-probability of its code
    tokens under the processed (constrained, warped) sampling distribution."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    if num_samples < 1 or temperature <= 0:
        raise ConfigError("num_samples must be >= 1 and temperature > 0")
    ids = prompt_token_ids(prompts, tokenizer)
    all_tries = _as_tries(tries, len(ids))
    layout = all_tries[0].layout
    ids = [with_item_begin(x, layout.sid_begin_id) for x in ids]
    pad = pad_token_id_for(model, tokenizer)
    device = model_device(model)
    L = layout.num_layers
    if seed is not None:
        torch.manual_seed(seed)
    out: list[list[ItemCandidate]] = []
    for s in range(0, len(ids), batch_size):
        batch, btries = ids[s : s + batch_size], all_tries[s : s + batch_size]
        input_ids, attn = left_pad(batch, pad, device)
        procs = LogitsProcessorList([ItemConstraintLogitsProcessor(btries, prompt_length=input_ids.shape[1])])
        if temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k:
            procs.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
        # generate's own warpers are switched off: ours run after the constraint
        gen = model.generate(
            input_ids=input_ids,
            attention_mask=attn,
            do_sample=True,
            num_beams=1,
            num_return_sequences=num_samples,
            max_new_tokens=L,
            min_new_tokens=L,
            logits_processor=procs,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=pad,
            eos_token_id=None,
        )
        new = gen.sequences[:, input_ids.shape[1] :]
        step_logp = torch.stack([torch.log_softmax(sc.float(), -1) for sc in gen.scores], dim=1)  # [R, L, V]
        logps = step_logp.gather(-1, new[..., None]).squeeze(-1).sum(-1).tolist()
        toks = new.tolist()
        for b in range(len(batch)):
            rows = range(b * num_samples, (b + 1) * num_samples)
            out.append(
                [
                    ItemCandidate(
                        codes=btries[b].codes_of(toks[r]),
                        items=tuple(btries[b].items(btries[b].codes_of(toks[r]))),
                        logprob=logps[r],
                    )
                    for r in rows
                ]
            )
    return out
