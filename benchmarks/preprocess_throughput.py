"""Tokens/s and peak memory of `megarec preprocess` vs the straightforward approach of Megatron-LM's
`tools/preprocess_data.py`.

Baseline (re-implemented here, same behaviour as Megatron-LM's tool): the main process reads JSON lines and
feeds them to a multiprocessing pool (`imap`, chunks of 32); each worker loads the tokenizer with
`AutoTokenizer`, parses one document and encodes it with the Hugging Face tokenizer (`tokenizer(text).input_ids`
+ EOD); the main process appends every document with megatron.core's `IndexedDatasetBuilder` and finalizes
the .idx. For `segments` rows the worker joins the text segments first; for `messages` rows it renders
`apply_chat_template(messages, tokenize=False)` and encodes that (no loss mask: Megatron-LM has none, while
megarec also writes the loss-mask dataset).
megarec: `run_preprocess` (workers read their own shard, the C++ `TextEncoder` splits off added tokens and
BPE-encodes ASCII text, the rest goes to the Rust tokenizer, shard files are written batch by batch, the .idx
is streamed).

Three corpora, reported separately: `segments` and `messages` are the pre-training and SFT rows of
`megarec data build` on the synthetic source (written as `data build` writes them, metadata included; full
of itemic tokens such as <|sid_begin|><s_a_12><s_b_3><s_c_40><|sid_end|>), `text` is plain English prose
(docstrings of the Python standard library, ~600 tokens a row). Tokenizer: the full offline Qwen3 vocabulary
expanded with 3 x `--codebook-size` itemic tokens exactly as `megarec expand-vocab` adds them.
Each pipeline runs in its own process (same worker count); the benchmark samples the summed PSS of that
process and its children every 0.1 s and reports the peak, at two input sizes (`--docs` and `--scale` times
as many rows). Outputs are checked to be byte-identical (text document .bin/.idx).
Not part of the test suite. Example (about two minutes on 2 cores):
    python benchmarks/preprocess_throughput.py --workers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

KINDS = ("text", "segments", "messages")

# --- the baseline (Megatron-LM's tools/preprocess_data.py approach) ------------------------------------------

_TOK = None
_EOD = None


def _baseline_init(tokenizer_dir: str) -> None:
    global _TOK, _EOD
    from transformers import AutoTokenizer

    _TOK = AutoTokenizer.from_pretrained(tokenizer_dir)
    _EOD = _TOK.convert_tokens_to_ids("<|endoftext|>")


def _baseline_text(line: str):
    ids = _TOK(json.loads(line)["text"]).input_ids + [_EOD]
    return ids, len(line)


def _baseline_segments(line: str):
    segments = json.loads(line)["segments"]
    ids = _TOK("".join(s["text"] for s in segments if s["type"] == "text")).input_ids + [_EOD]
    return ids, len(line)


def _baseline_messages(line: str):
    rendered = _TOK.apply_chat_template(json.loads(line)["messages"], tokenize=False)
    ids = _TOK(rendered, add_special_tokens=False).input_ids + [_EOD]
    return ids, len(line)


def run_baseline(
    kind: str, corpus: str, tokenizer_dir: str, prefix: str, workers: int, start: float
) -> tuple[int, float]:
    """Returns (tokens, seconds from `start` until the first document came back: pool start-up, tokenizer
    loading in the workers, first chunk)."""
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megarec.data.hf_tokenizer import FastTokenizer

    encode = {"text": _baseline_text, "segments": _baseline_segments, "messages": _baseline_messages}[kind]
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(FastTokenizer(tokenizer_dir).vocab_size))
    tokens, first = 0, None
    with (
        open(corpus, encoding="utf-8") as fin,
        mp.Pool(workers, initializer=_baseline_init, initargs=(tokenizer_dir,)) as pool,
    ):
        for ids, _ in pool.imap(encode, fin, 32):
            first = first or time.time() - start
            builder.add_document(torch.IntTensor(ids), [len(ids)])
            tokens += len(ids)
    builder.finalize(prefix + ".idx")
    return tokens, first or 0.0


def run_megarec(kind: str, corpus: str, tokenizer_dir: str, prefix: str, workers: int, shard_rows: int) -> int:
    from megarec.data.preprocess import PreprocessOptions, run_preprocess

    res = run_preprocess(
        PreprocessOptions(
            [corpus], tokenizer_dir, prefix, workers=workers, kind=kind, shard_rows=shard_rows, progress=False
        )
    )
    return res.tokens


# --- corpora and tokenizer -----------------------------------------------------------------------------------


def build_tokenizer(out_dir: str, codebook_size: int) -> str:
    """Offline Qwen3 tokenizer + 3 x codebook_size itemic tokens (as `megarec expand-vocab`) + itemic.json."""
    from transformers import AutoTokenizer

    from megarec.itemic.vocab import add_itemic_tokens
    from megarec.tokenizer.qwen3_offline import build_qwen3_tokenizer

    base = build_qwen3_tokenizer(os.path.join(out_dir, "base"))
    tok = AutoTokenizer.from_pretrained(base)
    layout = add_itemic_tokens(tok, 3, codebook_size)
    path = os.path.join(out_dir, "expanded")
    tok.save_pretrained(path)
    layout.save(path)
    return path


def _docstrings() -> list[str]:
    """Docstrings of the Python standard library (parsed with ast, nothing imported), in a fixed order."""
    import ast
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    docs = []
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "idlelib", "site-packages", "__pycache__"))
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                with open(os.path.join(top, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 40:
                        docs.append(doc)
    return docs


_SOURCES: dict = {}


def _built_tasks(seed: int) -> dict:
    """`megarec data build` samples of the synthetic source (built once per seed)."""
    from megarec.data.tasks.build import build_tasks
    from megarec.data.tasks.config import BuildConfig
    from megarec.rawdata.synthetic import SyntheticConfig, generate_synthetic

    if seed not in _SOURCES:
        log, codes = generate_synthetic(SyntheticConfig(num_users=300, num_items=900, seed=seed))
        _SOURCES[seed] = build_tasks(log, codes, BuildConfig(seed=seed), "user")
    return _SOURCES[seed]


def make_corpora(out_dir: str, docs: dict[str, int], seed: int) -> dict[str, str]:
    """One JSONL file per kind with docs[kind] rows."""
    from megarec.common.io import write_jsonl

    rng = np.random.default_rng(seed)
    built = _built_tasks(seed) if {"segments", "messages"} & set(docs) else {}
    paths = {}
    for kind, task in (("segments", "pretrain"), ("messages", "sft_train")):
        if kind in docs:
            rows = built[task]
            paths[kind] = os.path.join(out_dir, f"{kind}_{docs[kind]}.jsonl")
            write_jsonl(paths[kind], (rows[i] for i in rng.integers(0, len(rows), size=docs[kind])))
    if "text" in docs:
        if "docstrings" not in _SOURCES:
            _SOURCES["docstrings"] = _docstrings()
        pool, rows, k = _SOURCES["docstrings"], [], 0
        while len(rows) < docs["text"]:
            target, parts = int(rng.integers(300, 4000)), []
            while sum(map(len, parts)) < target:
                parts.append(pool[k % len(pool)])
                k += 1
            rows.append({"text": "\n\n".join(parts)})
        paths["text"] = os.path.join(out_dir, f"text_{docs['text']}.jsonl")
        write_jsonl(paths["text"], rows)
    return paths


# --- measurement -----------------------------------------------------------------------------------------------


def _tree_pss(proc) -> int:
    """Summed proportional set size of a process and its descendants (shared pages counted once overall)."""
    import psutil

    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(args: list[str]) -> tuple[dict, int]:
    """Run this script in child mode; returns (its JSON result, peak summed PSS in bytes)."""
    import psutil

    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdout=subprocess.PIPE)
    proc, peak, done = psutil.Process(child.pid), [0], threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _tree_pss(proc))
            except psutil.NoSuchProcess:
                return
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"child run failed: {' '.join(args)}")
    return json.loads(out.decode().strip().splitlines()[-1]), peak[0]


def child_main(ns: argparse.Namespace) -> None:
    # imports outside the timed part (torch and megatron.core for the baseline's builder)
    import transformers  # noqa: F401

    if ns.child == "baseline":
        import megatron.core.datasets.indexed_dataset  # noqa: F401
        import torch  # noqa: F401
    else:
        import megarec.data.preprocess  # noqa: F401

    start, first = time.time(), None
    if ns.child == "baseline":
        tokens, first = run_baseline(ns.kind, ns.input, ns.tokenizer, ns.prefix, ns.workers, start)
    else:
        tokens = run_megarec(ns.kind, ns.input, ns.tokenizer, ns.prefix, ns.workers, ns.shard_rows)
    print(json.dumps({"tokens": tokens, "seconds": time.time() - start, "first": first}))


def _same(a: str, b: str) -> bool:
    return all(open(a + ext, "rb").read() == open(b + ext, "rb").read() for ext in (".bin", ".idx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=20000, help="Rows of the segments and messages corpora.")
    ap.add_argument("--text-docs", type=int, default=3200, help="Rows of the text corpus (~600 tokens each).")
    ap.add_argument("--scale", type=int, default=2, help="The second input size is this many times the first.")
    ap.add_argument("--kinds", default=",".join(KINDS), help="Comma-separated subset of text,segments,messages.")
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer dir (default: offline Qwen3 + itemic tokens).")
    ap.add_argument("--codebook-size", type=int, default=8192, help="Itemic codes per layer of the default tokenizer.")
    ap.add_argument("--workers", type=int, default=2, help="Worker processes for both pipelines.")
    ap.add_argument(
        "--shard-rows",
        type=int,
        default=None,
        help="megarec shard size in rows (default: rows / (4 x workers), so every worker gets shards "
        "as on a large input with the default 20000).",
    )
    ap.add_argument("--repeats", type=int, default=1, help="Alternating runs of each pipeline; the best time counts.")
    ap.add_argument("--seed", type=int, default=0, help="Corpus seed.")
    ap.add_argument("--child", choices=("baseline", "megarec"), help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)

    kinds = [k for k in args.kinds.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="megarec-bench-") as tmp:
        tok = args.tokenizer or build_tokenizer(os.path.join(tmp, "tokenizer"), args.codebook_size)
        rows = []
        for kind in kinds:
            base_docs = args.text_docs if kind == "text" else args.docs
            for scale in (1, args.scale):
                docs = base_docs * scale
                corpus = make_corpora(tmp, {kind: docs}, args.seed)[kind]
                shard_rows = args.shard_rows or max(1, -(-docs // (4 * args.workers)))
                best: dict = {}
                for r in range(args.repeats):
                    for name in ("baseline", "megarec"):
                        prefix = os.path.join(tmp, f"{name}_{kind}")
                        out, peak = measure(
                            [
                                "--child",
                                name,
                                "--kind",
                                kind,
                                "--input",
                                corpus,
                                "--tokenizer",
                                tok,
                                "--prefix",
                                prefix,
                                "--workers",
                                str(args.workers),
                                "--shard-rows",
                                str(shard_rows),
                            ]
                        )
                        first = f", first document after {out['first']:.1f}s" if out["first"] else ""
                        print(
                            f"{kind:8s} x{scale} {name:8s} run {r}: {out['tokens']:,} tokens in {out['seconds']:.2f}s"
                            f" = {out['tokens'] / out['seconds']:,.0f} tokens/s{first}, peak {peak / 2**20:,.0f} MiB",
                            flush=True,
                        )
                        old = best.get(name)
                        best[name] = dict(out, peak=max(peak, old["peak"] if old else 0))
                        if old and old["seconds"] < out["seconds"]:
                            best[name].update(seconds=old["seconds"], first=old["first"])
                    same = _same(
                        os.path.join(tmp, f"baseline_{kind}"), os.path.join(tmp, f"megarec_{kind}_text_document")
                    )
                    same = same and best["baseline"]["tokens"] == best["megarec"]["tokens"]
                rows.append((kind, docs, best, same))
                os.unlink(corpus)
    print(
        f"\nworkers={args.workers}, cpus={os.cpu_count()}, best of {args.repeats}. tokens/s end to end (pool start, "
        "tokenizer loading, merge included); 'w/o start-up' = baseline tokens / (time - time to its first document),"
        " i.e. its start-up removed while megarec's is kept. Peak = summed PSS of the run's processes."
    )
    print(
        "| kind | rows | tokens | baseline tokens/s | megarec tokens/s | ratio | baseline w/o start-up "
        "| ratio to that | baseline peak MiB | megarec peak MiB | byte-identical |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, docs, best, same in rows:
        b, m = best["baseline"], best["megarec"]
        b_rate, m_rate = b["tokens"] / b["seconds"], m["tokens"] / m["seconds"]
        b_steady = b["tokens"] / (b["seconds"] - b["first"])
        print(
            f"| {kind} | {docs:,} | {m['tokens']:,} | {b_rate:,.0f} | {m_rate:,.0f} | {m_rate / b_rate:.2f}x | "
            f"{b_steady:,.0f} | {m_rate / b_steady:.2f}x | {b['peak'] / 2**20:,.0f} | {m['peak'] / 2**20:,.0f} "
            f"| {same} |"
        )


if __name__ == "__main__":
    main()
