"""`megarec preprocess`: JSONL/parquet samples → Megatron-Core indexed dataset(s), in parallel, resumably.

1. Plan shards (row ranges of the inputs). Worker processes each load the fast tokenizer once, stream their
   shard themselves, encode it 512 rows at a time (C++ `TextEncoder` + Rust tokenizer, see encoder.py) and
   append each batch's tokens / lengths / loss mask to the shard's files in `P.parts/` (made visible
   atomically; rejects, then a `.done.json` marker last). Tokens never travel back through a pipe, and
   memory does not grow with the shard or the input.
2. A re-run with the same inputs and options skips shards that are done (interrupted runs resume; the
   result is byte-identical to an uninterrupted run). Other leftovers in `P.parts/` are discarded.
3. Merge: concatenate shards in input order and stream the .idx shard by shard, or with --pack place samples
   into packs of <= S tokens by best-fit-decreasing (C++; needs all lengths) and build the .idx (C++);
   write `P_text_document.{bin,idx}`, for chat data
   `P_loss_mask_document.{bin,idx}`, `P.preprocess.json` (summary) and, with --on-error skip,
   `P.rejects.jsonl` — each via a temporary name and os.replace. Then `P.parts/` is removed.

Bad input fails before anything is written where it can be seen early (an unwritable prefix, an empty input
file) and otherwise leaves no trace: a row error (`--on-error fail`) or a run without a single document
removes `P.parts/` (it could never be resumed into a result) and any directory the run created, and the
outputs of an earlier run under the same prefix stay as they were. `P.preprocess.json` records the
tokenizer's fingerprint (vocabulary size and hash, `FastTokenizer.fingerprint`), which `megarec pretrain`
compares with data.tokenizer.

Packed layout: every sample is one Megatron *sequence* (ending in EOD) and every pack one Megatron
*document*, so `document_indices` mark pack boundaries and a reader gets a pack as consecutive sequences.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from megarec.common.errors import ConfigError, DataError, MegarecError
from megarec.common.io import atomic_open, temp_path, write_json
from megarec.common.outdir import check_out_prefix, has_entry
from megarec.data.encoder import DocumentEncoder, detect_kind
from megarec.data.indexed import index_bytes, loss_mask_prefix, text_prefix, token_dtype, write_index_stream
from megarec.data.shards import Shard, plan_shards, read_shard

ABORT_ENV = "MEGAREC_PREPROCESS_ABORT_AFTER_SHARDS"  # test hook: simulate a crash after k finished shards
FORMAT_VERSION = 1
OWN_PARTS = has_entry("manifest.json")  # a P.parts directory written by preprocess (resumable)
ENCODE_BATCH = 512
GATHER_TOKENS = 1 << 23


@dataclass
class PreprocessOptions:
    inputs: list[str]
    tokenizer: str
    output_prefix: str
    workers: int = 1
    kind: Optional[str] = None  # None: detect from the first row
    json_key: str = "text"
    seq_length: Optional[int] = None
    pack: bool = False
    on_error: str = "fail"
    shard_rows: int = 20000
    itemic: Optional[str] = None
    assistant_header: str = "<|im_start|>assistant\n"
    assistant_end: str = "<|im_end|>"
    progress: Optional[bool] = None  # None: only on a terminal
    force: bool = False  # replace a P.parts directory that preprocess did not write
    allow_unknown_itemic: bool = False  # tokenise unknown itemic token strings in text as ordinary text

    @property
    def parts(self) -> str:
        """Work directory of finished shards (the unit of resumption), removed once the outputs are merged."""
        return self.output_prefix + ".parts"

    def check_output(self) -> None:
        """Refuse a prefix naming the cwd (or an ancestor) and a foreign non-empty P.parts, before any work."""
        inputs = [("--input", p) for p in self.inputs] + [("--tokenizer", self.tokenizer), ("--itemic", self.itemic)]
        check_out_prefix(self.output_prefix, self.parts, force=self.force, inputs=inputs, own=OWN_PARTS)

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("--input: give at least one file")
        if self.on_error not in ("fail", "skip"):
            raise ConfigError("--on-error must be fail or skip")
        if self.pack and not self.seq_length:
            raise ConfigError("--pack needs --seq-length S")
        if self.seq_length is not None and self.seq_length < 2:
            raise ConfigError("--seq-length must be >= 2")
        if self.workers < 1:
            raise ConfigError("--workers must be >= 1")


@dataclass
class PreprocessResult:
    documents: int = 0
    tokens: int = 0
    rejected: int = 0
    reasons: dict = field(default_factory=dict)
    packs: Optional[int] = None
    shards: int = 0
    resumed_shards: int = 0
    seconds: float = 0.0
    outputs: list = field(default_factory=list)


# --- worker side ---------------------------------------------------------------------------------------------

_ENCODER: Optional[DocumentEncoder] = None


def _init_worker(enc_args: dict, quiet_tokenizers: bool) -> None:
    """Worker start: one process = one core, so no Rust thread pool; build the encoder unless forked with it."""
    global _ENCODER
    if quiet_tokenizers:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if _ENCODER is None:
        _ENCODER = DocumentEncoder(**enc_args)


def _shard_file(parts: str, index: int, ext: str) -> str:
    return os.path.join(parts, f"shard_{index:06d}.{ext}")


def _process_shard(task: tuple[Shard, str, str, str]) -> dict:
    """Encode one shard into parts/ (tokens, lens, mask, rejects, then the done marker); returns stats.
    Each batch is written as soon as it is encoded, so a worker's memory does not grow with the shard."""
    shard, parts, dtype_name, on_error = task
    enc = _ENCODER
    dtype = np.dtype(dtype_name)
    top = np.iinfo(dtype).max
    rejects: list = []
    documents = tokens = 0
    with contextlib.ExitStack() as files:
        out = {
            ext: files.enter_context(atomic_open(_shard_file(parts, shard.index, ext), "wb"))
            for ext in ("tokens", "lens") + (("mask",) if enc.kind == "messages" else ())
        }
        batch: list = []

        def flush():
            nonlocal documents, tokens
            if not batch:
                return
            res = enc.encode(batch)
            batch.clear()
            if res.rejects and on_error == "fail":
                row, reason = res.rejects[0]
                raise DataError(f"{shard.path}: row {row}: {reason}")
            rejects.extend(res.rejects)
            if res.ids.size and int(res.ids.max()) > top:
                raise DataError(f"{shard.path}: token id {int(res.ids.max())} does not fit {dtype_name}")
            out["tokens"].write(res.ids.astype(dtype, copy=False).tobytes())
            out["lens"].write(res.lengths.astype(np.int32, copy=False).tobytes())
            if "mask" in out:
                out["mask"].write(res.mask.tobytes() if res.mask is not None else b"")
            documents += int(res.lengths.size)
            tokens += int(res.ids.size)

        for row, rec in read_shard(shard):
            batch.append((row, rec))
            if len(batch) >= ENCODE_BATCH:
                flush()
        flush()
    with atomic_open(_shard_file(parts, shard.index, "rejects.jsonl"), "w", encoding="utf-8") as f:
        for row, reason in rejects:
            f.write(json.dumps({"file": shard.path, "row": row, "reason": reason}, ensure_ascii=False) + "\n")
    stats = {
        "index": shard.index,
        "rows": shard.rows,
        "documents": documents,
        "tokens": tokens,
        "rejected": len(rejects),
        "reasons": dict(Counter(_reason_key(r) for _, r in rejects)),
    }
    write_json(_shard_file(parts, shard.index, "done.json"), stats)
    return stats


def _reason_key(reason: str) -> str:
    """Group reasons for the summary: drop numbers and quoted specifics."""
    import re

    return re.sub(r"\d+", "N", reason.split(" (")[0])[:120]


# --- main side ----------------------------------------------------------------------------------------------


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _manifest(opts: PreprocessOptions, kind: str, shards: list[Shard], dtype: np.dtype) -> dict:
    tok_files = sorted(f for f in os.listdir(opts.tokenizer) if f.endswith((".json", ".jinja", ".txt", ".model")))
    return {
        "format": FORMAT_VERSION,
        "inputs": [
            {"path": os.path.abspath(p), "size": os.path.getsize(p), "mtime_ns": os.stat(p).st_mtime_ns}
            for p in opts.inputs
        ],
        "tokenizer": {f: _file_sha(os.path.join(opts.tokenizer, f)) for f in tok_files},
        "itemic": _file_sha(opts.itemic) if opts.itemic else None,
        "kind": kind,
        "json_key": opts.json_key,
        "dtype": dtype.name,
        "on_error": opts.on_error,
        "seq_length": opts.seq_length,
        "pack": opts.pack,
        "shard_rows": opts.shard_rows,
        "assistant_header": opts.assistant_header,
        "assistant_end": opts.assistant_end,
        "allow_unknown_itemic": opts.allow_unknown_itemic,
        "shards": [s.to_dict() for s in shards],
    }


def _check_inputs_have_rows(opts: PreprocessOptions, shards: list[Shard]) -> None:
    """An input file without a single row is a mistake (a failed export, the wrong path), never a dataset."""
    rows = Counter()
    for s in shards:
        rows[s.path] += s.rows
    for path in opts.inputs:
        if not rows[path]:
            raise DataError(f"{path}: empty file (no rows)")


def _detect_kind(opts: PreprocessOptions, shards: list[Shard]) -> str:
    if opts.kind:
        return opts.kind
    for shard in shards:
        for row, rec in read_shard(shard):
            kind = detect_kind(rec, opts.json_key)
            if kind:
                return kind
            if isinstance(rec, DataError):
                raise rec
            raise ConfigError(
                f"{shard.path}: row {row}: cannot detect --kind from the first row (expected a 'messages', "
                f"'segments' or '{opts.json_key}' field); pass --kind"
            )
    raise DataError(f"{', '.join(opts.inputs)}: no rows (only blank lines)")


def _prepare_parts(parts: str, manifest: dict) -> set[int]:
    """Reuse finished shards of an identical earlier run; otherwise start with an empty parts dir."""
    path = os.path.join(parts, "manifest.json")
    if os.path.isdir(parts):
        try:
            with open(path, encoding="utf-8") as f:
                same = json.load(f) == manifest
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            done = set()
            for name in os.listdir(parts):
                if name.startswith("shard_") and name.endswith(".done.json"):
                    done.add(int(name[6:12]))
                elif name.startswith("."):  # temporary files of an interrupted write
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(parts, name))
            return done
        shutil.rmtree(parts)
    os.makedirs(parts)
    write_json(path, manifest)
    return set()


def _load_done(parts: str, index: int) -> dict:
    with open(_shard_file(parts, index, "done.json"), encoding="utf-8") as f:
        return json.load(f)


def _missing_dirs(path: str) -> list[str]:
    """`path` and its ancestors that do not exist yet, deepest first (what os.makedirs(path) would create)."""
    out = []
    while path and not os.path.lexists(path):
        out.append(path)
        up = os.path.dirname(path)
        if up == path:
            break
        path = up
    return out


def run_preprocess(opts: PreprocessOptions) -> PreprocessResult:
    opts.validate()
    opts.check_output()
    t0 = time.time()
    shards = plan_shards(opts.inputs, opts.shard_rows)
    _check_inputs_have_rows(opts, shards)
    kind = _detect_kind(opts, shards)
    enc_args = dict(
        tokenizer_dir=opts.tokenizer,
        kind=kind,
        json_key=opts.json_key,
        itemic=opts.itemic,
        assistant_header=opts.assistant_header,
        assistant_end=opts.assistant_end,
        max_length=opts.seq_length if opts.pack else None,
        allow_unknown_itemic=opts.allow_unknown_itemic,
    )
    global _ENCODER
    _ENCODER = DocumentEncoder(**enc_args)  # validates the tokenizer; forked workers inherit it
    vocab_size, eod = _ENCODER.vocab_size, _ENCODER.eod
    dtype = token_dtype(vocab_size)
    parts = opts.parts
    out_dir = os.path.dirname(os.path.abspath(opts.output_prefix))
    created = _missing_dirs(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        done = _prepare_parts(parts, _manifest(opts, kind, shards, dtype))
        todo = [s for s in shards if s.index not in done]
        result = PreprocessResult(shards=len(shards), resumed_shards=len(done))
        if done:
            print(f"resuming: {len(done)} of {len(shards)} shards already done", file=sys.stderr)
        _run_shards(opts, todo, parts, dtype, enc_args, shards)
        stats = [_load_done(parts, s.index) for s in shards]
        _check_documents(opts, shards, stats)
        _merge(opts, kind, shards, stats, parts, dtype, result)
    except MegarecError:  # bad input: nothing to resume, and no trace of this run
        shutil.rmtree(parts, ignore_errors=True)
        for d in created:
            with contextlib.suppress(OSError):
                os.rmdir(d)  # only if still empty
        raise
    result.seconds = time.time() - t0
    summary = {
        "tokenizer": os.path.abspath(opts.tokenizer),
        "tokenizer_fingerprint": _ENCODER.tok.fingerprint(),
        "vocab_size": vocab_size,
        "eod_id": eod,
        "dtype": dtype.name,
        "kind": kind,
        "pack": opts.pack,
        "seq_length": opts.seq_length,
        "inputs": [os.path.abspath(p) for p in opts.inputs],
        "documents": result.documents,
        "tokens": result.tokens,
        "packs": result.packs,
        "rejected": result.rejected,
        "reasons": result.reasons,
        "loss_mask": kind == "messages",
    }
    write_json(opts.output_prefix + ".preprocess.json", summary)
    shutil.rmtree(parts)
    return result


def _check_documents(opts: PreprocessOptions, shards: list[Shard], stats: list[dict]) -> None:
    """A run that would write a dataset without a single document fails instead (with its reason)."""
    if any(st["documents"] for st in stats):
        return
    rows = sum(s.rows for s in shards)
    rejected = sum(st["rejected"] for st in stats)
    reasons = Counter()
    for st in stats:
        reasons.update(st["reasons"])
    why = (
        f"all {rejected} rows were rejected (most often: {reasons.most_common(1)[0][0]})"
        if rejected
        else f"its {rows} rows are blank"
    )
    raise DataError(f"{', '.join(opts.inputs)}: no documents to write: {why}")


def _run_shards(
    opts: PreprocessOptions, todo: list[Shard], parts: str, dtype: np.dtype, enc_args: dict, all_shards: list[Shard]
) -> None:
    from tqdm import tqdm

    abort_after = int(os.environ.get(ABORT_ENV, "0") or 0)
    total_rows = sum(s.rows for s in all_shards)
    bar = tqdm(
        total=total_rows,
        initial=total_rows - sum(s.rows for s in todo),
        unit="doc",
        unit_scale=True,
        desc="preprocess",
        disable=(not opts.progress) if opts.progress is not None else None,
        dynamic_ncols=True,
    )
    tasks = [(s, parts, dtype.name, opts.on_error) for s in todo]
    tokens, start, finished = 0, time.time(), 0
    workers = min(opts.workers, max(1, len(todo)))
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        if workers == 1:
            results = map(_process_shard, tasks)
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = stack.enter_context(ctx.Pool(workers, initializer=_init_worker, initargs=(enc_args, True)))
            stack.callback(pool.terminate)
            results = pool.imap(_process_shard, tasks)
        for st in results:
            finished += 1
            tokens += st["tokens"]
            bar.update(st["rows"])
            bar.set_postfix_str(f"{tokens / max(time.time() - start, 1e-9):,.0f} tok/s", refresh=False)
            if abort_after and finished >= abort_after:
                raise KeyboardInterrupt(f"{ABORT_ENV}={abort_after}")


def _merge(
    opts: PreprocessOptions,
    kind: str,
    shards: list[Shard],
    stats: list[dict],
    parts: str,
    dtype: np.dtype,
    result: PreprocessResult,
) -> None:
    result.documents = sum(st["documents"] for st in stats)
    result.tokens = sum(st["tokens"] for st in stats)
    result.rejected = sum(st["rejected"] for st in stats)
    reasons = Counter()
    for st in stats:
        reasons.update(st["reasons"])
    result.reasons = dict(sorted(reasons.items()))
    streams = [("tokens", dtype, text_prefix(opts.output_prefix))]
    if kind == "messages":
        streams.append(("mask", np.dtype(np.uint8), loss_mask_prefix(opts.output_prefix)))
    staged: list[tuple[str, str]] = []
    try:
        if opts.pack:  # packing needs every sample length at once (4 bytes per sample)
            from megarec import _cpp

            lengths = (
                np.concatenate([np.fromfile(_shard_file(parts, s.index, "lens"), dtype=np.int32) for s in shards])
                if shards
                else np.zeros(0, np.int32)
            )
            try:
                order, offsets = _cpp.best_fit_pack(lengths.astype(np.int64), int(opts.seq_length))
            except ValueError as e:
                raise DataError(f"packing failed: {e}") from None
            result.packs = int(offsets.size - 1)
            seq_lengths, doc_indices = lengths[order], offsets
        else:
            order = None
        for ext, dt, prefix in streams:
            tmp_bin = temp_path(prefix + ".bin")
            staged.append((tmp_bin, prefix + ".bin"))
            with open(tmp_bin, "wb") as out:
                if order is None:
                    for s in shards:
                        with open(_shard_file(parts, s.index, ext), "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 22)
                else:
                    _gather(out, _concat_parts(parts, shards, ext, dt), lengths, order, dt)
            tmp_idx = temp_path(prefix + ".idx")
            staged.append((tmp_idx, prefix + ".idx"))
            with open(tmp_idx, "wb") as f:
                if order is None:  # one document per sample: streamed shard by shard
                    write_index_stream(
                        f,
                        lambda: (np.fromfile(_shard_file(parts, s.index, "lens"), dtype=np.int32) for s in shards),
                        result.documents,
                        dt,
                    )
                else:
                    f.write(index_bytes(seq_lengths, doc_indices, dt))
        if opts.on_error == "skip":
            tmp_rej = temp_path(opts.output_prefix + ".rejects.jsonl")
            staged.append((tmp_rej, opts.output_prefix + ".rejects.jsonl"))
            with open(tmp_rej, "wb") as out:
                for s in shards:
                    with open(_shard_file(parts, s.index, "rejects.jsonl"), "rb") as src:
                        shutil.copyfileobj(src, out)
        for tmp, final in staged:
            os.replace(tmp, final)
            result.outputs.append(final)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _concat_parts(parts: str, shards: list[Shard], ext: str, dtype: np.dtype) -> np.ndarray:
    """All shards' arrays of one kind as one memory-mapped array (samples numbered across shards)."""
    path = os.path.join(parts, f"all.{ext}")
    with open(path, "wb") as out:
        for s in shards:
            with open(_shard_file(parts, s.index, ext), "rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _gather(out, flat: np.ndarray, lengths: np.ndarray, order: np.ndarray, dtype: np.dtype) -> None:
    """Write samples in `order` from `flat` (all samples back to back), a bounded chunk at a time."""
    starts = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    ordered = lengths[order].astype(np.int64)
    cum = np.cumsum(ordered)
    cuts = np.searchsorted(cum, np.arange(GATHER_TOKENS, int(cum[-1]) if cum.size else 0, GATHER_TOKENS), "right")
    bounds = [0, *sorted(set(int(c) for c in cuts if 0 < c < order.size)), order.size]
    for i, j in zip(bounds[:-1], bounds[1:]):
        idx = order[i:j]
        lens = ordered[i:j]
        shift = np.zeros(lens.size, dtype=np.int64)
        np.cumsum(lens[:-1], out=shift[1:])
        pos = np.repeat(starts[idx] - shift, lens) + np.arange(int(lens.sum()), dtype=np.int64)
        out.write(np.ascontiguousarray(flat[pos], dtype=dtype).tobytes())
