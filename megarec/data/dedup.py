"""`megarec data dedup`: drop training rows that are near-duplicates of evaluation rows.

Each row's text (plain text, joined segments, or joined message contents) is split into words and
whole special tokens (so each itemic token counts as a word), shingled into word n-grams, and MinHashed;
evaluation rows go into a MinHash LSH index (datasketch) and a training row is dropped when some
candidate's estimated Jaccard similarity reaches the threshold.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from megarec.common.errors import ConfigError, DataError
from megarec.common.io import atomic_open, iter_rows, write_json
from megarec.common.outdir import check_out_dir, staged_dir

WORD = re.compile(r"<[^<>\s]{1,64}>|\w+", re.UNICODE)


@dataclass
class DedupOptions:
    train: list[str]
    eval: list[str]
    out: str
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    json_key: str = "text"
    force: bool = False

    def inputs(self) -> list[tuple[str, str]]:
        return [("--train", p) for p in self.train] + [("--eval", p) for p in self.eval]

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError("--threshold must be in (0, 1]")
        if self.num_perm < 16 or self.ngram < 1:
            raise ConfigError("--num-perm must be >= 16 and --ngram >= 1")


def row_text(rec: Any, json_key: str = "text") -> str:
    if not isinstance(rec, dict):
        return ""
    if isinstance(rec.get("messages"), list):
        return "\n".join(str(m.get("content", "")) for m in rec["messages"] if isinstance(m, dict))
    if isinstance(rec.get("segments"), list):
        return "".join(str(s.get("text", "")) for s in rec["segments"] if isinstance(s, dict))
    value = rec.get(json_key)
    return value if isinstance(value, str) else ""


def shingles(text: str, n: int) -> set[bytes]:
    words = WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def minhash(text: str, opts: DedupOptions):
    from datasketch import MinHash

    m = MinHash(num_perm=opts.num_perm, seed=1)
    sh = shingles(text, opts.ngram)
    if sh:
        m.update_batch(list(sh))
    return m, bool(sh)


def _records(path: str):
    for row, rec in iter_rows(path):
        if isinstance(rec, DataError):
            raise rec
        yield row, rec


def _output_names(train: list[str]) -> list[str]:
    """<stem>.jsonl for each training file; two files with the same stem are refused."""
    names: list[str] = []
    for path in train:
        name = os.path.basename(path)
        for suffix in (".gz", ".parquet", ".pq", ".jsonl", ".json"):
            name = name[: -len(suffix)] if name.endswith(suffix) else name
        name = name + ".jsonl"
        if name in names:
            raise ConfigError(f"two --train files would both be written to {name}")
        names.append(name)
    return names


def _filter_file(path: str, out_path: str, lsh, eval_hashes: dict, opts: DedupOptions) -> tuple[int, int, list]:
    """Copy the rows of `path` that are not near-duplicates to `out_path`; (rows, kept, examples)."""
    rows = kept = 0
    examples = []
    with atomic_open(out_path, "w", encoding="utf-8") as out:
        for row, rec in _records(path):
            rows += 1
            m, ok = minhash(row_text(rec, opts.json_key), opts)
            dup = None
            if ok:
                for key in lsh.query(m):
                    if eval_hashes[key].jaccard(m) >= opts.threshold:
                        dup = key
                        break
            if dup is not None:
                if len(examples) < 5:
                    examples.append({"row": row, "near": dup})
                continue
            kept += 1
            out.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    return rows, kept, examples


def dedup_files(opts: DedupOptions) -> dict:
    """Filter every training file into `opts.out` (written beside it, then renamed into place)."""
    from datasketch import MinHashLSH

    opts.validate()
    check_out_dir(opts.out, force=opts.force, inputs=opts.inputs())
    names = _output_names(opts.train)
    lsh = MinHashLSH(threshold=opts.threshold, num_perm=opts.num_perm)
    eval_hashes = {}
    for path in opts.eval:
        for row, rec in _records(path):
            m, ok = minhash(row_text(rec, opts.json_key), opts)
            if ok:
                key = f"{path}:{row}"
                eval_hashes[key] = m
                lsh.insert(key, m)
    report = {
        "threshold": opts.threshold,
        "num_perm": opts.num_perm,
        "ngram": opts.ngram,
        "eval_rows": len(eval_hashes),
        "rows": 0,
        "dropped": 0,
        "files": [],
    }
    with staged_dir(opts.out, force=opts.force, inputs=opts.inputs()) as stage:
        for path, name in zip(opts.train, names):
            rows, kept, examples = _filter_file(path, os.path.join(stage, name), lsh, eval_hashes, opts)
            report["files"].append(
                {
                    "input": path,
                    "output": os.path.join(opts.out, name),
                    "rows": rows,
                    "kept": kept,
                    "dropped": rows - kept,
                    "examples": examples,
                }
            )
            report["rows"] += rows
            report["dropped"] += rows - kept
        write_json(os.path.join(stage, "dedup_report.json"), report)
    return report
