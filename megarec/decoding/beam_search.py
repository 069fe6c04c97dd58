"""Batched beam search over the item trie: k distinct real items per prompt, ranked by log-probability.

Two backends give the same answer:
  * "trie" (default): megarec's own loop. One prefill of the left-padded prompts (each ending with
    `<|sid_begin|>`), then L steps; at each step every live beam is extended only by its trie children,
    the best `beam_width` (prefix, score) pairs per prompt survive and the KV cache is reordered.
    Scores are sums of the model's own log-softmax over the full vocabulary (no renormalisation over
    the allowed tokens), so a candidate's score is exactly log p(codes | prompt).
  * "hf": `model.generate(num_beams=..., logits_processor=[ItemConstraintLogitsProcessor])` with
    `length_penalty=0` and L new tokens; handy to check the trie loop against Hugging Face.
Beam search is exact (equals scoring every item) when `beam_width` is at least the number of distinct
prefixes at every depth below L; otherwise it is the usual approximation. Leaves are distinct code
tuples, so the returned candidates are distinct.
"""

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
from megarec.decoding.trie import ItemTrie


def _as_tries(tries, n: int) -> list[ItemTrie]:
    if isinstance(tries, ItemTrie):
        return [tries] * n
    tries = list(tries)
    if len(tries) != n:
        raise ConfigError(f"{len(tries)} tries for {n} prompts (give one trie, or one per prompt)")
    return tries


def constrained_beam_search(
    model,
    tokenizer,
    prompts: Sequence,
    tries: ItemTrie | Sequence[ItemTrie],
    *,
    num_beams: int = 32,
    beam_width: int | None = None,
    batch_size: int = 8,
    score_end: bool = False,
    backend: str = "trie",
    progress: bool = False,
) -> list[list[ItemCandidate]]:
    """Per prompt, up to `num_beams` distinct real items, best first.

    prompts: strings (tokenised with `tokenizer`, no special tokens added; apply the chat template
    first) or token-id lists; `<|sid_begin|>` is appended unless the prompt already ends with it.
    tries: one trie for all prompts, or one per prompt (e.g. per-domain catalogues).
    beam_width: beams kept per step (default `num_beams`; wider is more exact, never fewer than k).
    score_end: add log p(`<|sid_end|>` | item) to each score (one more forward pass).
    """
    if num_beams < 1:
        raise ConfigError(f"num_beams must be >= 1, got {num_beams}")
    width = max(num_beams, beam_width or num_beams)
    if backend not in ("trie", "hf"):
        raise ConfigError(f"backend must be 'trie' or 'hf', got {backend!r}")
    if backend == "hf" and score_end:
        raise ConfigError("score_end is only implemented by the 'trie' backend")
    ids = prompt_token_ids(prompts, tokenizer)
    all_tries = _as_tries(tries, len(ids))
    begin = all_tries[0].layout.sid_begin_id
    ids = [with_item_begin(x, begin) for x in ids]
    pad = pad_token_id_for(model, tokenizer)
    out: list[list[ItemCandidate]] = []
    starts = range(0, len(ids), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="beam search", unit="batch")
    step = _trie_beam_batch if backend == "trie" else _hf_beam_batch
    with torch.inference_mode():
        for s in starts:
            out.extend(step(model, ids[s : s + batch_size], all_tries[s : s + batch_size], width, pad, score_end))
    return [cands[:num_beams] for cands in out]


def _forward(model, input_ids, attention_mask, position_ids, cache=None):
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1), out.past_key_values


def _trie_beam_batch(
    model, batch: list[list[int]], tries: list[ItemTrie], W: int, pad: int, score_end: bool
) -> list[list[ItemCandidate]]:
    device = model_device(model)
    B, L = len(batch), tries[0].num_layers
    input_ids, attn = left_pad(batch, pad, device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logp, cache = _forward(model, input_ids, attn, pos)
    # W beams per prompt; only beam 0 is live at the start.
    cache.batch_repeat_interleave(W)
    logp = logp.repeat_interleave(W, dim=0)
    attn = attn.repeat_interleave(W, dim=0)
    next_pos = pos[:, -1].repeat_interleave(W) + 1
    scores = torch.full((B, W), float("-inf"))
    scores[:, 0] = 0.0
    prefixes: list[list[tuple[int, ...]]] = [[()] * W for _ in range(B)]
    for level in range(L):
        new_scores = torch.full((B, W), float("-inf"))
        new_prefixes: list[list[tuple[int, ...]]] = []
        src_rows = torch.arange(B * W)  # dead beams keep their own row
        tokens = torch.full((B * W,), pad, dtype=torch.long)
        logp_cpu = logp.cpu()
        for b in range(B):
            cand_scores, cand_beams, cand_toks = [], [], []
            for w in range(W):
                if scores[b, w] == float("-inf"):
                    continue
                nxt = torch.from_numpy(tries[b].allowed(prefixes[b][w]))
                if not len(nxt):
                    continue
                cand_scores.append(scores[b, w] + logp_cpu[b * W + w, nxt])
                cand_beams.append(torch.full((len(nxt),), w, dtype=torch.long))
                cand_toks.append(nxt)
            row_prefixes = [()] * W
            if cand_scores:
                cs, cb, ct = torch.cat(cand_scores), torch.cat(cand_beams), torch.cat(cand_toks)
                top = torch.topk(cs, min(W, len(cs))).indices
                for j, i in enumerate(top.tolist()):
                    new_scores[b, j] = cs[i]
                    row_prefixes[j] = prefixes[b][int(cb[i])] + (int(ct[i]),)
                    src_rows[b * W + j] = b * W + int(cb[i])
                    tokens[b * W + j] = int(ct[i])
            new_prefixes.append(row_prefixes)
        scores, prefixes = new_scores, new_prefixes
        if level < L - 1 or score_end:
            cache.reorder_cache(src_rows.to(device))
            attn = torch.cat([attn, torch.ones((B * W, 1), dtype=attn.dtype, device=device)], dim=1)
            logp, cache = _forward(model, tokens[:, None].to(device), attn, next_pos[:, None], cache)
            next_pos = next_pos + 1
    if score_end:
        end = tries[0].layout.sid_end_id
        scores = scores + logp[:, end].cpu().view(B, W)
    results = []
    for b in range(B):
        order = sorted((w for w in range(W) if scores[b, w] > float("-inf")), key=lambda w: -float(scores[b, w]))
        results.append([_candidate(tries[b], prefixes[b][w], float(scores[b, w])) for w in order])
    return results


def _candidate(trie: ItemTrie, token_prefix: Sequence[int], score: float) -> ItemCandidate:
    codes = trie.codes_of(token_prefix)
    return ItemCandidate(codes=codes, items=tuple(trie.items(codes)), logprob=score)


def _hf_beam_batch(
    model, batch: list[list[int]], tries: list[ItemTrie], W: int, pad: int, score_end: bool
) -> list[list[ItemCandidate]]:
    from megarec.decoding.processor import ItemConstraintLogitsProcessor

    device = model_device(model)
    L = tries[0].num_layers
    input_ids, attn = left_pad(batch, pad, device)
    proc = ItemConstraintLogitsProcessor(tries, prompt_length=input_ids.shape[1])
    gen = model.generate(
        input_ids=input_ids,
        attention_mask=attn,
        num_beams=W,
        num_return_sequences=W,
        max_new_tokens=L,
        min_new_tokens=L,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        logits_processor=[proc],
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=pad,
        eos_token_id=None,
        temperature=None,
        top_k=None,
        top_p=None,
    )
    seqs = gen.sequences[:, input_ids.shape[1] :].tolist()
    seq_scores = gen.sequences_scores.tolist()
    results = []
    for b in range(len(batch)):
        seen, cands = set(), []
        for r in range(b * W, (b + 1) * W):
            toks, score = seqs[r], seq_scores[r]
            # HF seeds beams 1.. with -1e9; such beams (and duplicates) are not real candidates
            if score < -1e8 or len(toks) < L or tuple(toks[:L]) in seen or not tries[b].is_item(toks[:L]):
                continue
            seen.add(tuple(toks[:L]))
            cands.append(_candidate(tries[b], toks[:L], score))
        cands.sort(key=lambda c: -c.logprob)
        results.append(cands)
    return results
