"""Fast probe of the generative recommender's levers on MovieLens-100k (run by hand, not by the tests).

Trains the demo's small Qwen3 (HF, random init, the demo's expanded vocabulary) directly on the users'
training sequences written as itemic tokens — next-item targets at every position, like stage 2 on user
sequences without the template text — and ranks the leave-one-out test item with the benchmark's own
trie-constrained beam search (history excluded, full catalogue). One lever changes per run, everything else
stays, so the rows of one sweep are comparable; the demo pipeline then confirms what wins.

    python benchmarks/gen_seqrec_levers.py --demo runs/demo --codes runs/demo/itemic/codes.csv \
        --context 20 --epochs 4 --seed 0 --out runs/levers/ctx20.json

Prints one JSON line: test Recall/NDCG@5/10, train and eval seconds, the settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch


def windows(seq_tokens: list[list[int]], context: int, stride: int) -> list[list[int]]:
    """Windows of up to context + 1 items (context items + the next one), cut from the end, every `stride`."""
    out = []
    n = len(seq_tokens)
    end = n
    while end >= 2:
        start = max(0, end - context - 1)
        out.append([t for it in seq_tokens[start:end] for t in it])
        if start == 0:
            break
        end -= stride
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="A demo output dir (model/expanded: config, tokenizer, itemic.json).")
    ap.add_argument("--codes", required=True, help="Codes table (item_id,c1..cL).")
    ap.add_argument("--context", type=int, default=20, help="Items of history in a training window and a prompt.")
    ap.add_argument("--stride", type=int, default=0, help="Window stride in items (0 = context: disjoint windows).")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--time-budget", type=float, default=0.0, help="Stop training after this many seconds (0 = none).")
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--layers", type=int, default=0, help="Override decoder layers (0 = the demo's).")
    ap.add_argument("--hidden", type=int, default=0, help="Override hidden size (0 = the demo's; ffn = 3x).")
    ap.add_argument("--num-beams", default="20", help="Comma-separated beam widths to evaluate (same model).")
    ap.add_argument(
        "--eval-context", default="", help="Comma-separated prompt lengths to evaluate (default: --context)."
    )
    ap.add_argument("--max-eval-users", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

    from megarec.common.itemic import ItemicLayout, read_codes_table
    from megarec.decoding.beam_search import constrained_beam_search
    from megarec.decoding.trie import ItemTrie
    from megarec.eval.seqrec_data import load_seqrec
    from megarec.eval.seqrec_eval import ranking_metrics

    expanded = os.path.join(a.demo, "model", "expanded")
    tok = AutoTokenizer.from_pretrained(expanded)
    layout = ItemicLayout.load(os.path.join(expanded, "itemic.json"))
    cfg = AutoConfig.from_pretrained(expanded)
    if a.layers:
        cfg.num_hidden_layers = a.layers
    if a.hidden:
        cfg.head_dim = cfg.head_dim * a.hidden // cfg.hidden_size
        cfg.intermediate_size = 3 * a.hidden
        cfg.hidden_size = a.hidden
    model = Qwen3ForCausalLM(cfg)
    codes = read_codes_table(a.codes).as_dict()
    data = load_seqrec("ml-100k", seed=0)
    toks = {it: layout.item_ids(tuple(codes[it])) for it in data.item_ids}
    train_windows = []
    for s in data.train_sequences():
        seq = [toks[data.item_ids[i - 1]] for i in s]
        train_windows += windows(seq, a.context, a.stride or a.context)
    n_tokens = sum(len(w) for w in train_windows)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.01)
    total_steps = max(1, int(a.epochs * n_tokens / a.batch_tokens))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (
            min(1.0, (k + 1) / max(1, total_steps // 20))
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / total_steps)))
        ),
    )
    t0 = time.perf_counter()
    step, losses = 0, []
    model.train()
    pad = tok.pad_token_id or 0
    while step < total_steps:
        order = rng.permutation(len(train_windows))
        batch, width = [], 0
        for j in order:
            w = train_windows[j]
            if batch and (len(batch) + 1) * max(width, len(w)) > a.batch_tokens:
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                lab = torch.full((len(batch), width), -100, dtype=torch.long)
                att = torch.zeros((len(batch), width), dtype=torch.long)
                for r, x in enumerate(batch):
                    ids[r, : len(x)] = torch.tensor(x)
                    lab[r, : len(x)] = torch.tensor(x)
                    att[r, : len(x)] = 1
                loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss))
                step += 1
                batch, width = [], 0
                if step >= total_steps or (a.time_budget and time.perf_counter() - t0 > a.time_budget):
                    break
            batch.append(w)
            width = max(width, len(w))
        if a.time_budget and time.perf_counter() - t0 > a.time_budget:
            break
    train_s = time.perf_counter() - t0
    model.eval()
    sub = data.subset_users(a.max_eval_users, a.seed) if a.max_eval_users else data
    hists, targets = sub.split_inputs("test")
    known = {it: tuple(codes[it]) for it in data.item_ids}
    from collections import Counter

    pop = Counter(data.item_ids[i - 1] for s in data.train_sequences() for i in s)
    tries = []
    for h in hists:
        seen = {data.item_ids[int(i) - 1] for i in h}
        tries.append(ItemTrie({k: c for k, c in known.items() if k not in seen}, layout, popularity=pop))
    evals = {}
    for ctx in [int(x) for x in (a.eval_context or str(a.context)).split(",")]:
        prompts = [[t for i in h[-ctx:] for t in toks[data.item_ids[i - 1]]] for h in hists]
        for beams in [int(x) for x in a.num_beams.split(",")]:
            t1 = time.perf_counter()
            cands = constrained_beam_search(model, tok, prompts, tries, num_beams=beams, batch_size=16)
            top = [[data.item_index[c.items[0]] for c in cs] for cs in cands]
            res = ranking_metrics(top, [int(t) for t in targets])
            evals[f"ctx{ctx}_beam{beams}"] = {
                **{k: round(v, 4) for k, v in res.items()},
                "eval_s": round(time.perf_counter() - t1, 1),
            }
    out = {
        "evals": evals,
        "train_s": round(train_s, 1),
        "steps": step,
        "train_tokens_per_epoch": n_tokens,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "users": len(hists),
        **vars(a),
    }
    print(json.dumps(out))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
