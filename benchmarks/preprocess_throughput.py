"""Tokens/s of `megarec preprocess` vs the straightforward Megatron-LM `tools/preprocess_data.py` approach.

Baseline (re-implemented here, same behaviour as Megatron-LM's tool): the main process reads JSON lines and
feeds them to a multiprocessing pool (`imap`, chunks of 32); each worker parses one document and encodes it
with the Hugging Face tokenizer (`tokenizer(text).input_ids` + EOD); the main process appends every
document with megatron.core's `IndexedDatasetBuilder` and finalizes the .idx.
megarec: workers read their own shard, batch-encode with the Rust tokenizer, write shard files directly,
and the merge builds the .idx in C++.

Both runs use the same corpus, tokenizer and number of workers; outputs are checked to be byte-identical.
Not part of the test suite. Example:
    python benchmarks/preprocess_throughput.py --docs 50000 --workers 2
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time

import numpy as np

_TOK = None
_EOD = None


def _baseline_init(tokenizer_dir: str) -> None:
    global _TOK, _EOD
    from transformers import AutoTokenizer

    _TOK = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = _TOK.get_vocab()
    _EOD = vocab.get("<|endoftext|>", _TOK.eos_token_id)


def _baseline_encode(line: str):
    text = json.loads(line)["text"]
    ids = _TOK(text).input_ids + [_EOD]
    return ids, len(line)


def run_baseline(corpus: str, tokenizer_dir: str, prefix: str, workers: int) -> tuple[int, float]:
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megarec.data.hf_tokenizer import FastTokenizer

    start = time.time()
    vocab_size = FastTokenizer(tokenizer_dir).vocab_size
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(vocab_size))
    tokens = 0
    with open(corpus, encoding="utf-8") as fin, mp.Pool(workers, initializer=_baseline_init,
                                                        initargs=(tokenizer_dir,)) as pool:
        for ids, _ in pool.imap(_baseline_encode, fin, 32):
            builder.add_document(torch.IntTensor(ids), [len(ids)])
            tokens += len(ids)
    builder.finalize(prefix + ".idx")
    return tokens, time.time() - start


def run_megarec(corpus: str, tokenizer_dir: str, prefix: str, workers: int, shard_rows: int) -> tuple[int, float]:
    from megarec.data.preprocess import PreprocessOptions, run_preprocess

    start = time.time()
    res = run_preprocess(PreprocessOptions([corpus], tokenizer_dir, prefix, workers=workers, kind="text",
                                           shard_rows=shard_rows, progress=False))
    return res.tokens, time.time() - start


def make_corpus(path: str, docs: int, seed: int) -> None:
    """Pre-training text from the synthetic source (itemic tokens included), repeated to `docs` rows."""
    from megarec.data.sources.synthetic import SyntheticConfig, generate_synthetic
    from megarec.data.tasks.build import build_tasks
    from megarec.data.tasks.config import BuildConfig

    log, codes = generate_synthetic(SyntheticConfig(num_users=300, num_items=900, seed=seed))
    built = build_tasks(log, codes, BuildConfig(seed=seed), "user")
    texts = [s["segments"][0]["text"] for s in built["pretrain"]]
    texts += ["\n".join(m["content"] for m in s["messages"]) for s in built["sft_train"]]
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in rng.integers(0, len(texts), size=docs):
            f.write(json.dumps({"text": texts[i]}, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=50000, help="Documents in the generated corpus.")
    ap.add_argument("--input", default=None, help="Use this JSONL corpus ({'text': ...} rows) instead.")
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer dir (default: offline Qwen3 layout).")
    ap.add_argument("--workers", type=int, default=2, help="Worker processes for both pipelines.")
    ap.add_argument("--shard-rows", type=int, default=5000, help="megarec shard size in rows.")
    ap.add_argument("--repeats", type=int, default=1, help="Alternating runs of each; the best time counts.")
    ap.add_argument("--seed", type=int, default=0, help="Corpus seed.")
    args = ap.parse_args()

    import transformers  # noqa: F401  (import cost paid up front by both)

    with tempfile.TemporaryDirectory(prefix="megarec-bench-") as tmp:
        tok = args.tokenizer
        if tok is None:
            from megarec.tokenizer.qwen3_offline import build_qwen3_tokenizer

            tok = build_qwen3_tokenizer(os.path.join(tmp, "tokenizer"))
        corpus = args.input or os.path.join(tmp, "corpus.jsonl")
        if not args.input:
            make_corpus(corpus, args.docs, args.seed)
        best = {"baseline": None, "megarec": None}
        for r in range(args.repeats):
            for name in ("baseline", "megarec"):
                prefix = os.path.join(tmp, f"{name}{r}")
                if name == "baseline":
                    tokens, secs = run_baseline(corpus, tok, prefix, args.workers)
                else:
                    tokens, secs = run_megarec(corpus, tok, prefix, args.workers, args.shard_rows)
                    prefix += "_text_document"
                print(f"{name:9s} run {r}: {tokens:,} tokens in {secs:.2f}s = {tokens / secs:,.0f} tokens/s")
                if best[name] is None or secs < best[name][1]:
                    best[name] = (tokens, secs, prefix)
        (bt, bs, bp), (mt, ms, mp_) = best["baseline"], best["megarec"]
        same = all(open(bp + ext, "rb").read() == open(mp_ + ext, "rb").read() for ext in (".bin", ".idx"))
        print(f"outputs byte-identical: {same}")
        print(f"baseline {bt / bs:,.0f} tokens/s | megarec {mt / ms:,.0f} tokens/s | "
              f"ratio megarec/baseline = {(mt / ms) / (bt / bs):.2f}x  (workers={args.workers}, cpus={os.cpu_count()})")


if __name__ == "__main__":
    main()
