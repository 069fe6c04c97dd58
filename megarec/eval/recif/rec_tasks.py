"""Recommendation tasks: batched trie-constrained beam search (beam = k) per sample, restricted to the
catalogue of the sample's domain, then item-level ("PID") metrics — each decoded code tuple becomes its
most popular item — and code-level ("SID") pass@k for comparison with code-only evaluations."""

from __future__ import annotations

import numpy as np

from megarec.common.errors import DataError
from megarec.eval import metrics as M
from megarec.eval.recif.samples import Catalogue, prompt_messages, where


def build_tries(catalogue: Catalogue, layout) -> tuple[object, dict[str, object]]:
    """(trie over every item, {domain: trie over that domain's items})."""
    from megarec.decoding.trie import ItemTrie

    everything = ItemTrie(catalogue.codes, layout, popularity=catalogue.popularity)
    per_domain = (
        ItemTrie.per_domain(catalogue.codes, catalogue.domains, layout, popularity=catalogue.popularity)
        if catalogue.domains
        else {}
    )
    return everything, per_domain


def evaluate_rec_task(
    loaded, samples: list[dict], catalogue: Catalogue, tries, *, num_beams: int, ks: list[int], batch_size: int = 8
) -> dict:
    """Metrics (averaged) plus per-sample top-10 predictions for one recommendation task."""
    from megarec.decoding.beam_search import constrained_beam_search
    from megarec.eval.hf_model import chat_prompt

    everything, per_domain = tries
    prompts, sample_tries, targets = [], [], []
    for s in samples:
        md = s["metadata"]
        tgt = [str(t) for t in md.get("target_item_ids") or ()]
        if not tgt:
            raise DataError(f"{where(s)}: field 'metadata.target_item_ids' is empty")
        targets.append(tgt)
        sample_tries.append(per_domain.get(md.get("domain"), everything))
        prompts.append(chat_prompt(loaded.tokenizer, prompt_messages(s)))
    cands = constrained_beam_search(
        loaded.model, loaded.tokenizer, prompts, sample_tries, num_beams=num_beams, batch_size=batch_size, progress=True
    )
    ranked_items = [list(dict.fromkeys(c.item for c in cs)) for cs in cands]
    ranked_codes = [[c.codes for c in cs] for cs in cands]
    target_codes = [[catalogue.codes[t] for t in tgt if t in catalogue.codes] for tgt in targets]
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"pass@{k}"] = M.mean_metric(M.pass_at_k, ranked_items, targets, k)
        metrics[f"position1_pass@{k}"] = M.mean_metric(M.position1_pass_at_k, ranked_items, targets, k)
        metrics[f"recall@{k}"] = M.mean_metric(M.recall_at_k, ranked_items, targets, k)
        metrics[f"ndcg@{k}"] = M.mean_metric(M.ndcg_at_k, ranked_items, targets, k)
        metrics[f"sid_pass@{k}"] = M.mean_metric(M.pass_at_k, ranked_codes, target_codes, k)
    metrics["mrr"] = M.mean_metric(lambda r, t, k: M.mrr(r, t), ranked_items, targets, 0)
    metrics["target_coverage"] = float(np.mean([all(t in catalogue.codes for t in tgt) for tgt in targets]))
    per_sample = [
        {"row": s["_row"], "targets": tgt, "top10": r[:10], "top10_logprob": [round(c.logprob, 4) for c in cs[:10]]}
        for s, tgt, r, cs in zip(samples, targets, ranked_items, cands)
    ]
    return {
        "kind": "rec",
        "n": len(samples),
        "metrics": metrics,
        "ks": ks,
        "num_beams": num_beams,
        "samples": per_sample,
    }
