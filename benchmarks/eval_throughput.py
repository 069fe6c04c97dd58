"""Recommendation decoding throughput: prompts/s of trie-constrained beam search (megarec's trie loop and
HF `generate` + the constraint logits processor) vs unconstrained HF beam search, same model, prompts,
beam width and number of new tokens (L codes after `<|sid_begin|>`).

Model: a random Qwen3 (qwen3-small-like: 4 layers, hidden 256) whose vocabulary is a 4,096-token base
plus L x K itemic tokens; a catalogue of random distinct items. Each side runs `--repeats` times,
alternating, and the best time counts (guards against other load on a shared machine).

    .venv/bin/python benchmarks/eval_throughput.py [--prompts 32] [--beams 32] [--items 5000] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def build(args):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megarec.common.itemic import ItemicLayout
    from megarec.decoding.trie import ItemTrie

    base, L, K = args.base_vocab, args.layers_codes, args.codebook
    layout = ItemicLayout.create(base, L, K)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=base + L * K + 2,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=32,
            tie_word_embeddings=True,
            max_position_embeddings=4096,
        )
    ).eval()
    rng = np.random.default_rng(0)
    codes: dict[str, tuple[int, ...]] = {}
    while len(codes) < args.items:
        c = tuple(int(x) for x in rng.integers(0, K, L))
        codes.setdefault(f"i{len(codes)}", c) if c not in codes.values() else None
    trie = ItemTrie(codes, layout)
    prompts = [
        [int(t) for t in rng.integers(0, base, args.prompt_len)] + [layout.sid_begin_id] for _ in range(args.prompts)
    ]
    return model, layout, trie, prompts


def unconstrained(model, layout, prompts, beams, batch):
    from megarec.decoding.batching import left_pad

    L = layout.num_layers
    with torch.inference_mode():
        for s in range(0, len(prompts), batch):
            ids, attn = left_pad(prompts[s : s + batch], 0)
            model.generate(
                input_ids=ids,
                attention_mask=attn,
                num_beams=beams,
                num_return_sequences=beams,
                max_new_tokens=L,
                min_new_tokens=L,
                do_sample=False,
                length_penalty=0.0,
                early_stopping=True,
                pad_token_id=0,
                eos_token_id=None,
            )


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32, help="Number of prompts.")
    ap.add_argument("--prompt-len", type=int, default=128, help="Prompt length in tokens.")
    ap.add_argument("--beams", type=int, default=32, help="Beam width = items returned per prompt.")
    ap.add_argument("--batch", type=int, default=8, help="Prompts per batch.")
    ap.add_argument("--items", type=int, default=5000, help="Catalogue size (random distinct code tuples).")
    ap.add_argument("--codebook", type=int, default=256, help="Codes per layer.")
    ap.add_argument("--layers-codes", type=int, default=3, help="Code layers per item.")
    ap.add_argument("--base-vocab", type=int, default=4096, help="Base vocabulary before the itemic tokens.")
    ap.add_argument("--repeats", type=int, default=2, help="Runs per side; the fastest counts.")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from megarec.decoding.beam_search import constrained_beam_search

    model, layout, trie, prompts = build(args)
    # warm-up (allocations, kernels)
    constrained_beam_search(model, None, prompts[:2], trie, num_beams=args.beams, batch_size=2)
    t_free = timed(lambda: unconstrained(model, layout, prompts, args.beams, args.batch), args.repeats)
    t_trie = timed(
        lambda: constrained_beam_search(model, None, prompts, trie, num_beams=args.beams, batch_size=args.batch),
        args.repeats,
    )
    t_hf = timed(
        lambda: constrained_beam_search(
            model, None, prompts, trie, num_beams=args.beams, batch_size=args.batch, backend="hf"
        ),
        args.repeats,
    )
    n = len(prompts)
    print(
        f"{n} prompts x {args.prompt_len} tokens, beam {args.beams}, batch {args.batch}, {args.items} items "
        f"({args.layers_codes} x {args.codebook} codes), {args.threads} threads"
    )
    print(f"unconstrained HF beam search      : {n / t_free:8.2f} prompts/s")
    print(f"constrained, megarec trie loop    : {n / t_trie:8.2f} prompts/s")
    print(f"constrained, HF generate+processor: {n / t_hf:8.2f} prompts/s")
    print(
        f"ratio constrained(trie)/unconstrained = {t_free / t_trie:.2f}; "
        f"constrained(HF)/unconstrained = {t_free / t_hf:.2f}"
    )


if __name__ == "__main__":
    main()
