"""Helpers shared by the data tests: an itemic-token copy of a tokenizer and small corpora."""

from __future__ import annotations

import json
import os

ITEMIC_LAYERS = 3
ITEMIC_CODEBOOK = 16


def itemic_tokenizer(base_dir: str, out_dir: str) -> str:
    """Copy of `base_dir` with itemic tokens added by `add_tokens` (3 x 16 codes) and an itemic.json."""
    if os.path.isfile(os.path.join(out_dir, "itemic.json")):
        return out_dir
    from transformers import AutoTokenizer

    from megarec.common.itemic import itemic_token_strings

    tok = AutoTokenizer.from_pretrained(base_dir)
    base = len(tok)
    tok.add_tokens(itemic_token_strings(ITEMIC_LAYERS, ITEMIC_CODEBOOK))
    tok.save_pretrained(out_dir)
    meta = {
        "first_id": base,
        "last_id": len(tok) - 1,
        "num_layers": ITEMIC_LAYERS,
        "codebook_size": ITEMIC_CODEBOOK,
        "sid_begin_id": len(tok) - 2,
        "sid_end_id": len(tok) - 1,
        "layer_letters": ["a", "b", "c"],
        "base_vocab_size": base,
    }
    with open(os.path.join(out_dir, "itemic.json"), "w") as f:
        json.dump(meta, f)
    return out_dir


def write_jsonl(path: str, rows: list) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def read_dataset(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def random_chats(n: int, seed: int, max_words: int) -> list[dict]:
    """`n` seeded chat rows (system + 1-2 user/assistant turns of up to `max_words` filler words)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        turns = [{"role": "system", "content": "You recommend items."}]
        for t in range(int(rng.integers(1, 3))):
            turns.append({"role": "user", "content": f"question {i}.{t} " + "word " * int(rng.integers(1, max_words))})
            turns.append(
                {"role": "assistant", "content": f"answer {i}.{t} " + "reply " * int(rng.integers(1, max_words))}
            )
        out.append({"messages": turns})
    return out
