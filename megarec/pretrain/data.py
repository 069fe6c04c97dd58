"""Training data: Megatron-Core GPTDataset (or, for chat data, LossMaskedGPTDataset; for `--pack` output,
PackedSequenceDataset) through BlendedMegatronDatasetBuilder (weighted blends, train/valid split, mock data),
a tokenizer adapter, and deterministic resumable batch iteration."""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from megarec.common.errors import ConfigError, DataError, write_failure_reason
from megarec.pretrain.config import DataConfig, TrainConfig


class TokenizerInfo:
    """The attributes Megatron's GPTDataset reads from a tokenizer (vocab size, EOD, pad)."""

    def __init__(self, vocab_size: int, eod: int, name: str, pad: int = -1):
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = pad
        self.bos = None
        self.unique_identifiers = {"class": "megarec.TokenizerInfo", "name": name, "vocab_size": vocab_size, "eod": eod}

    def tokenize(self, text: str):  # GPTDataset never tokenises; kept for the interface
        raise ConfigError("TokenizerInfo carries ids only; tokenise text with `megarec preprocess`")

    @classmethod
    def from_hf(cls, path: str) -> "TokenizerInfo":
        if not os.path.isdir(path):
            raise ConfigError(f"data.tokenizer: directory not found: {path}")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        eod = tok.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tok.get_vocab() else tok.eos_token_id
        if eod is None:
            raise ConfigError(f"data.tokenizer: {path} defines neither <|endoftext|> nor an eos token")
        return cls(len(tok), int(eod), os.path.abspath(path))

    @classmethod
    def synthetic(cls, vocab_size: int) -> "TokenizerInfo":
        """For mock data only: the last id of the vocabulary plays EOD."""
        return cls(vocab_size, vocab_size - 1, "synthetic")


def read_itemic_range(data: DataConfig) -> Optional[tuple[int, int]]:
    """(first_id, last_id) of itemic tokens from itemic.json, or None if there is none."""
    path = data.itemic or (os.path.join(data.tokenizer, "itemic.json") if data.tokenizer else None)
    if path and os.path.isdir(path):
        path = os.path.join(path, "itemic.json")
    if not path or not os.path.isfile(path):
        if data.itemic:
            raise ConfigError(f"data.itemic: {path} not found")
        return None
    with open(path) as f:
        meta = json.load(f)
    try:
        return int(meta["first_id"]), int(meta["last_id"])
    except KeyError as e:
        raise ConfigError(f"{path}: missing field {e}") from None


def parse_blend(data_path: list[str]) -> tuple[list[str], Optional[list[float]]]:
    """['p'] or ['0.6', 'a', '0.4', 'b'] → (prefixes, weights); checks the files exist."""
    if not data_path:
        raise ConfigError("data.data_path is empty: give dataset prefixes (or set data.mock=true)")
    items = " ".join(data_path).split()
    weights = None
    if len(items) > 1 or _is_number(items[0]):
        if len(items) % 2 or not all(_is_number(w) for w in items[0::2]):
            raise ConfigError(f"data.data_path: expected 'WEIGHT PREFIX' pairs, got {' '.join(items)}")
        weights = [float(w) for w in items[0::2]]
        prefixes = items[1::2]
    else:
        prefixes = items
    for prefix in prefixes:
        for ext in (".bin", ".idx"):
            if not os.path.isfile(prefix + ext):
                raise ConfigError(f"data.data_path: {prefix + ext} not found")
    return prefixes, weights


def split_matrix(split: str) -> list[Optional[tuple[float, float]]]:
    """(begin, end) fractions, or None for an empty split, of train/valid/test for a data.split string: the
    rule of Megatron-Core's parse_and_normalize_split + convert_split_vector_to_split_matrix, computed here so
    that config checks run without importing Megatron."""
    weights = [float(w) for w in re.findall(r"[.0-9]+", split)]
    if not weights or len(weights) > 3 or sum(weights) <= 0:
        raise ConfigError(f"data.split={split!r}: expected up to three non-negative weights, e.g. 98,2,0")
    weights += [0.0] * (3 - len(weights))
    bounds = np.cumsum([0.0] + [w / sum(weights) for w in weights])
    return [None if bounds[i] == bounds[i + 1] else (float(bounds[i]), float(bounds[i + 1])) for i in range(3)]


def read_preprocess_summary(dataset_prefix: str) -> Optional[dict]:
    """`P.preprocess.json` (tokenizer, EOD, kind, pack, seq_length, ...) of a `P_text_document` prefix written
    by `megarec preprocess`, or None for datasets from elsewhere."""
    from megarec.data.indexed import TEXT_SUFFIX

    base = dataset_prefix[: -len(TEXT_SUFFIX)] if dataset_prefix.endswith(TEXT_SUFFIX) else dataset_prefix
    path = base + ".preprocess.json"
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable preprocess summary ({e})") from None


def check_data_sources(data: DataConfig, train: TrainConfig) -> None:
    """Before any process starts: every dataset's .idx and .bin agree (`check_indexed_dataset`: a truncated
    file would otherwise fail deep inside Megatron after the model is built), it was preprocessed with the
    tokenizer of data.tokenizer (`check_tokenizer`), the prefixes fit data.packed / data.loss_mask (from
    `P.preprocess.json` when present, and the loss-mask siblings on disk), and every split the run reads holds
    documents (Megatron's GPTDataset loops forever on an empty split it must draw samples from)."""
    from megarec.data.indexed import check_indexed_dataset, check_loss_mask_dataset, sibling_loss_mask_prefix

    seq_length = train.seq_length
    if data.mock:
        if data.loss_mask or data.packed:
            raise ConfigError("data.loss_mask and data.packed need real (chat / packed) datasets, not mock data")
        return
    prefixes, _ = parse_blend(data.data_path)
    fingerprint: dict = {}  # of data.tokenizer, computed once for all prefixes
    for prefix in prefixes:
        try:
            text = check_indexed_dataset(prefix)
        except DataError as e:
            raise DataError(f"data.data_path: {e}") from None
        meta = read_preprocess_summary(prefix) or {}
        check_tokenizer(prefix, meta, data.tokenizer, fingerprint)
        packed = meta.get("pack")
        if data.packed and packed is False:
            raise ConfigError(
                f"data.packed=true but {prefix} was preprocessed without --pack; re-run "
                "`megarec preprocess --pack --seq-length S` or set data.packed=false"
            )
        if not data.packed and packed:
            raise ConfigError(
                f"{prefix} was written by `megarec preprocess --pack`: train it with data.packed=true "
                "(one pack per sequence, per-document positions, attention and loss), or "
                "preprocess without --pack for a GPTDataset stream"
            )
        if data.packed and meta.get("seq_length") and int(meta["seq_length"]) > seq_length:
            raise ConfigError(
                f"{prefix} holds packs of up to {meta['seq_length']} tokens, more than "
                f"train.seq_length={seq_length}: raise train.seq_length or re-pack"
            )
        if data.loss_mask:
            try:
                mask = sibling_loss_mask_prefix(prefix)
            except ValueError as e:
                raise ConfigError(f"data.loss_mask: {e}") from None
            if not (os.path.isfile(mask + ".bin") and os.path.isfile(mask + ".idx")):
                raise ConfigError(
                    f"data.loss_mask: {mask}.bin/.idx not found (chat data is preprocessed with --kind messages)"
                )
        if data.loss_mask or data.packed:  # packed data reads its loss mask sibling when there is one
            try:
                mask = sibling_loss_mask_prefix(prefix)
            except ValueError:
                mask = None
            if mask and os.path.isfile(mask + ".idx"):
                try:
                    check_loss_mask_dataset(prefix, mask, text)
                except DataError as e:
                    raise DataError(f"data.loss_mask: {e}") from None
        documents = text["documents"]
        matrix = split_matrix(data.split)
        for i, name in [(0, "train")] + ([(1, "valid")] if train.eval_interval else []):
            if matrix[i] is None and name == "valid":
                continue  # no valid weight in data.split: evaluation is skipped, as before
            begin, end = matrix[i] or (0.0, 0.0)
            if int(round(end * documents)) - int(round(begin * documents)) < 1:
                raise ConfigError(
                    f"data.split={data.split} leaves the {name} split of {prefix} without a document "
                    f"({documents} {'packs' if data.packed else 'documents'} in all): change "
                    f"data.split{' or set train.eval_interval=0' if name == 'valid' else ''}"
                )


def check_tokenizer(prefix: str, meta: dict, tokenizer: Optional[str], fingerprint: dict) -> None:
    """The tokenizer `megarec preprocess` recorded for `prefix` (its fingerprint in `P.preprocess.json`) must be
    data.tokenizer's: ids of another vocabulary would train the wrong rows, or padding rows, without a word.
    Summaries written before fingerprints were recorded hold only `vocab_size`: that is compared, silently
    otherwise. Datasets from elsewhere (no summary) and tokenizers without tokenizer.json are not checked.
    `fingerprint` caches data.tokenizer's across prefixes."""
    recorded = meta.get("tokenizer_fingerprint")
    if not isinstance(recorded, dict) or not recorded:
        recorded = {"vocab_size": meta["vocab_size"]} if isinstance(meta.get("vocab_size"), int) else None
    if not recorded or not tokenizer or not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        return
    if not fingerprint:
        from megarec.data.hf_tokenizer import tokenizer_fingerprint

        fingerprint.update(tokenizer_fingerprint(tokenizer))
    if all(fingerprint.get(k) == v for k, v in recorded.items()):
        return
    differs = (
        f"{recorded.get('vocab_size', '?')} entries, data.tokenizer has {fingerprint['vocab_size']}"
        if recorded.get("vocab_size") != fingerprint["vocab_size"]
        else f"same size ({fingerprint['vocab_size']} entries) but other tokens"
    )
    raise ConfigError(
        f"data.tokenizer={tokenizer} is not the tokenizer {prefix} was preprocessed with "
        f"({meta.get('tokenizer', 'recorded in its .preprocess.json')}: {differs}); set data.tokenizer to that "
        "one or preprocess the data again with this one"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@dataclass
class Datasets:
    train: object
    valid: Optional[object]
    tokenizer: TokenizerInfo


def build_datasets(data: DataConfig, train: TrainConfig, vocab_size: int, run_dir: str, thd: bool = False) -> Datasets:
    """Train/valid datasets sized for the whole run (steps × global batch). With `thd` (packed data
    under Transformer Engine) packs carry no S×S attention mask."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset

    from megarec.data.megatron_datasets import MegarecDatasetConfig

    tokenizer = TokenizerInfo.from_hf(data.tokenizer) if data.tokenizer else None
    if tokenizer is None:
        if not data.mock:
            raise ConfigError("data.tokenizer is required for real data (its EOD id and vocabulary size)")
        tokenizer = TokenizerInfo.synthetic(vocab_size)
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} entries but the model vocabulary is "
            f"{vocab_size}: set model.vocab_size or use the expanded checkpoint's config"
        )
    blend = None if data.mock else parse_blend(data.data_path)
    n_eval = (train.steps // train.eval_interval + 1) * train.eval_iters if train.eval_interval else 0
    sizes = [train.steps * train.global_batch_size, n_eval * train.global_batch_size, 0]
    cfg = MegarecDatasetConfig(
        random_seed=train.seed,
        sequence_length=train.seq_length,
        blend=blend,
        split=data.split,
        path_to_cache=data.cache_dir or os.path.join(run_dir, "data_cache"),
        tokenizer=tokenizer,
        reset_position_ids=data.reset_position_ids,
        reset_attention_mask=data.reset_attention_mask,
        eod_mask_loss=data.eod_mask_loss,
        create_attention_mask=data.reset_attention_mask or (data.packed and not thd),
        mmap_bin_files=True,
        loss_mask=data.loss_mask,  # packed: require the sibling mask, or train every in-document token
    )
    # Build only the splits the run reads: no test split, and no valid split without evaluation.
    cfg.split_matrix = [cfg.split_matrix[0], cfg.split_matrix[1] if n_eval else None, None]
    if data.mock:
        dataset_cls = MockGPTDataset
        cfg.mock = True
    elif data.packed:
        from megarec.data.megatron_datasets import PackedSequenceDataset as dataset_cls
    elif data.loss_mask:
        from megarec.data.megatron_datasets import LossMaskedGPTDataset as dataset_cls
    else:
        dataset_cls = GPTDataset
    with _cache_build(cfg.path_to_cache):
        train_ds, valid_ds, _ = BlendedMegatronDatasetBuilder(dataset_cls, sizes, lambda: True, cfg).build()
    return Datasets(train_ds, valid_ds if n_eval else None, tokenizer)


@contextlib.contextmanager
def _cache_build(cache_dir: str) -> Iterator[None]:
    """Megatron-Core reuses index files it finds in the cache and writes them in place, so a build the file
    system cut short (full disk, quota, file-size limit) would leave files a later run could take for a
    finished index: remove the files this build created and say in one line what failed."""
    before = set(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else set()
    try:
        yield
    except Exception as e:
        reason = write_failure_reason(e)
        if reason is None:
            raise
        created = set(os.listdir(cache_dir)) - before if os.path.isdir(cache_dir) else set()
        for name in created:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(cache_dir, name))
        raise DataError(
            f"cannot build the dataset index cache in {cache_dir} (data.cache_dir): {reason}; "
            f"the {len(created)} partial index file(s) of this build were removed"
        ) from e


def microbatch_indices(
    consumed_samples: int, total_samples: int, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int
) -> Iterator[list[int]]:
    """Sample indices of this DP rank's micro-batches, global batch after global batch, starting at
    `consumed_samples` (the resume point). Each global batch is split contiguously across DP ranks."""
    per_rank = global_batch_size // dp_size
    start = consumed_samples
    while start + global_batch_size <= total_samples:
        base = start + dp_rank * per_rank
        for mb in range(per_rank // micro_batch_size):
            first = base + mb * micro_batch_size
            yield list(range(first, first + micro_batch_size))
        start += global_batch_size


def _collate(samples: list[dict]) -> dict:
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}


def make_loader(
    dataset, consumed_samples: int, total_samples: int, train: TrainConfig, dp_rank: int, dp_size: int, num_workers: int
):
    """A DataLoader yielding this rank's micro-batches in global order from `consumed_samples`."""
    indices = list(
        microbatch_indices(
            consumed_samples, total_samples, train.global_batch_size, train.micro_batch_size, dp_rank, dp_size
        )
    )
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=indices, collate_fn=_collate, num_workers=num_workers, persistent_workers=num_workers > 0
    )
