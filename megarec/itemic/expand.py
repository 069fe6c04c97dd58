"""Model side of vocabulary expansion (`megarec expand-vocab`) for Qwen3 HF checkpoints.

Embedding rows become a multiple of `pad_to_multiple`. Rows of the old tokenizer (ids < old len(tokenizer))
are kept; every other row (new itemic tokens, the base checkpoint's unused padding rows, the new padding)
is drawn from a multivariate normal with the mean and covariance of the kept rows. An untied output layer
gets the same treatment with its own statistics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from megarec.common.errors import ConfigError, DataError
from megarec.common.itemic import ITEMIC_JSON, ItemicLayout, check_codebook_size, layer_letters
from megarec.common.outdir import check_out_dir, staged_dir

SUPPORTED_MODEL_TYPES = ("qwen3",)
_CHUNK_ROWS = 16384


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def fit_gaussian(rows):
    """Mean [D] and covariance [D, D] (float64, unbiased) of `rows`, accumulated in chunks."""
    import torch

    n, d = rows.shape
    if n < 2:
        raise DataError(f"need at least 2 trained embedding rows to fit a covariance, got {n}")
    total = torch.zeros(d, dtype=torch.float64)
    gram = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, n, _CHUNK_ROWS):
        x = rows[s : s + _CHUNK_ROWS].to(torch.float64)
        total += x.sum(0)
        gram += x.T @ x
    mean = total / n
    cov = (gram - n * torch.outer(mean, mean)) / (n - 1)
    return mean, (cov + cov.T) / 2


def sample_gaussian(mean, cov, n: int, generator):
    """n draws of N(mean, cov) (float64); a rank-deficient covariance is handled through its eigenvectors."""
    import torch

    try:
        factor = torch.linalg.cholesky(cov)
    except RuntimeError:
        evals, evecs = torch.linalg.eigh(cov)
        factor = evecs * evals.clamp(min=0).sqrt()
    z = torch.randn(n, mean.numel(), generator=generator, dtype=torch.float64)
    return mean + z @ factor.T


def reinit_rows(weight, keep: int, generator) -> None:
    """In place: rows >= keep ← multivariate normal fitted on rows < keep."""
    import torch

    with torch.no_grad():
        mean, cov = fit_gaussian(weight[:keep])
        weight[keep:] = sample_gaussian(mean, cov, weight.shape[0] - keep, generator).to(weight.dtype)


def _check_base(base_dir: Path) -> dict:
    cfg_path = base_dir / "config.json"
    if not cfg_path.is_file():
        raise DataError(f"{cfg_path}: not found (--hf-dir must be a Hugging Face checkpoint directory)")
    try:
        cfg = json.loads(cfg_path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{cfg_path}: invalid JSON ({e})") from e
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DataError(
            f"{cfg_path}: field 'model_type' is {model_type!r}; expand-vocab supports Qwen3 checkpoints "
            f"(model_type {', '.join(map(repr, SUPPORTED_MODEL_TYPES))})"
        )
    return cfg


def expand_checkpoint(
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_layers: int,
    codebook_size: int,
    pad_to_multiple: int = 128,
    seed: int = 0,
    force: bool = False,
    inputs: Iterable[tuple[str, str | None]] = (),
) -> ItemicLayout:
    """Write an expanded copy of a Qwen3 HF checkpoint (model, tokenizer, itemic.json) to `out_dir`.

    `out_dir` must be missing or empty unless `force`; it is replaced only once the whole copy is written.
    `inputs` are further (flag, path) inputs the output must not be or contain (besides --hf-dir)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megarec.itemic.vocab import add_itemic_tokens

    layer_letters(num_layers)
    check_codebook_size(codebook_size)
    if pad_to_multiple < 1:
        raise ConfigError(f"--pad-to-multiple must be >= 1, got {pad_to_multiple}")
    inputs = [("--hf-dir", os.fspath(base_dir)), *inputs]
    check_out_dir(out_dir, force=force, inputs=inputs)
    base_dir = Path(base_dir)
    _check_base(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base_len = len(tokenizer)
    chat_template = getattr(tokenizer, "chat_template", None)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < base_len:
        raise DataError(f"{base_dir}: the embedding has {rows} rows but the tokenizer has {base_len} entries")

    new_len = base_len + num_layers * codebook_size + 2
    padded = round_up(new_len, pad_to_multiple)
    layout = add_itemic_tokens(tokenizer, num_layers, codebook_size, padded)

    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight.data_ptr() == in_emb.weight.data_ptr()
    model.resize_token_embeddings(padded, mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    reinit_rows(model.get_input_embeddings().weight, base_len, generator)
    out_emb = model.get_output_embeddings()
    if out_emb is not None and not tied:
        reinit_rows(out_emb.weight, base_len, generator)
    model.config.vocab_size = padded
    if chat_template and tokenizer.chat_template != chat_template:
        tokenizer.chat_template = chat_template

    with staged_dir(out_dir, force=force, inputs=inputs) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        layout.save(Path(stage) / ITEMIC_JSON, seed=seed)
    return layout
