"""What the final model writes when nothing constrains it: greedy, unconstrained answers to the next-item
prompt of held-out users, checked against the real catalogue and shown as movie titles."""

from __future__ import annotations

import json

from megarec.common.itemic import read_codes_table


def _captions(items_jsonl: str) -> dict[str, str]:
    out = {}
    with open(items_jsonl, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out[str(rec["item_id"])] = rec.get("caption") or ""
    return out


def free_generations(
    model_dir: str,
    codes_path: str,
    items_jsonl: str,
    dataset: str,
    *,
    users: int,
    max_history: int,
    seed: int = 0,
    cache_dir: str | None = None,
) -> dict:
    """Greedy answers for `users` seeded test users: fraction that decode to a real item, hits, examples."""
    import torch

    from megarec.eval.hf_model import chat_prompt, load_hf_model
    from megarec.eval.seqrec_data import load_seqrec
    from megarec.eval.seqrec_generative import rec_messages

    loaded = load_hf_model(model_dir)
    codes = read_codes_table(codes_path).as_dict()
    by_codes = {tuple(c): item for item, c in codes.items()}
    captions = _captions(items_jsonl)
    data = load_seqrec(dataset, cache_dir=cache_dir, seed=seed)
    sub = data.subset_users(users, seed) if users < data.num_users else data
    histories, targets = sub.split_inputs("test")
    tok = loaded.tokenizer
    layout = loaded.layout
    examples, valid, well_formed, hits = [], 0, 0, 0
    for h, t in zip(histories, targets):
        hist_items = [data.item_ids[i - 1] for i in h[-max_history:]]
        hist_codes = [tuple(codes[i]) for i in hist_items if i in codes]
        prompt = chat_prompt(tok, rec_messages(hist_codes, data.domain, "en", seed, layout.layer_letters))
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            out = loaded.model.generate(
                ids,
                max_new_tokens=layout.num_layers + 3,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        parsed = layout.parse_items(new)
        item = by_codes.get(tuple(parsed[0])) if parsed else None
        target = data.item_ids[int(t) - 1]
        well_formed += bool(parsed)
        valid += item is not None
        hits += item == target
        examples.append(
            {
                "history_tail": [captions.get(i, i) for i in hist_items[-3:]],
                "generated": captions.get(item, item) if item else tok.decode(new),
                "valid_item": item is not None,
                "target": captions.get(target, target),
                "hit": item == target,
            }
        )
    n = max(len(examples), 1)
    return {
        "users": len(examples),
        "well_formed_fraction": well_formed / n,
        "valid_item_fraction": valid / n,
        "greedy_hit_rate": hits / n,
        "examples": examples,
    }
