"""Build a Qwen3-layout Hugging Face fast tokenizer offline.

The byte-level BPE ranks come from `qwen.tiktoken`, which the `dashscope` wheel on PyPI ships
(fetched with `pip download`, never installed). Ranks become ids 0..N-1; BPE merges are recovered
from the ranks (one merge per multi-byte token, found by replaying BPE below that token's rank);
Qwen3's 26 added tokens follow at ids N..N+25, exactly as in the published Qwen3 tokenizers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

from megarec.common.atomic import atomic_path, atomic_write_text
from megarec.common.bytelevel import byte_to_unicode
from megarec.common.cache import cache_root, pip_download_wheel
from megarec.common.errors import DataError, MegarecError
from megarec.common.outdir import check_out_dir, staged_dir

# Pre-tokenizer regex of Qwen2/Qwen3 (single digits, unlike GPT-4's \p{N}{1,3}).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen3's added tokens in id order (first one gets id = number of BPE ranks); the flag says whether
# HF treats the token as "special" (skipped by decode(skip_special_tokens=True)).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
DEFAULT_MODEL_MAX_LENGTH = 131072

TIKTOKEN_MEMBER = "dashscope/resources/qwen.tiktoken"
TIKTOKEN_NAME = "qwen.tiktoken"
_BUILD_FORMAT = 1  # bump when the generated tokenizer.json changes, to invalidate the build cache


def ensure_qwen_tiktoken(cache_dir: str | os.PathLike | None = None) -> str:
    """Path to a cached `qwen.tiktoken`; downloads the dashscope wheel (no deps) and extracts it once."""
    root = Path(cache_root(cache_dir))
    target = root / TIKTOKEN_NAME
    if target.is_file() and target.stat().st_size > 0:
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="megarec-dashscope-") as tmp:
        try:
            wheel = pip_download_wheel("dashscope", tmp)
        except MegarecError as e:
            raise MegarecError(
                f"{e} (the dashscope wheel carries qwen.tiktoken); pass --tiktoken PATH to use a local copy"
            ) from None
        with zipfile.ZipFile(wheel) as zf:
            if TIKTOKEN_MEMBER not in zf.namelist():
                raise MegarecError(f"{os.path.basename(wheel)} has no member {TIKTOKEN_MEMBER}")
            with atomic_path(target) as part:
                with open(part, "wb") as out, zf.open(TIKTOKEN_MEMBER) as src:
                    shutil.copyfileobj(src, out)
                load_tiktoken_ranks(part)  # validate before publishing
    return str(target)


def load_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken BPE file (`base64token rank` per line); ranks must be exactly 0..N-1."""
    ranks: dict[bytes, int] = {}
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read tiktoken file ({e.strerror})") from e
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                tok, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
            except (IndexError, ValueError) as e:
                raise DataError(f"{path}: line {lineno}: expected '<base64 token> <rank>'") from e
            if tok in ranks:
                raise DataError(f"{path}: line {lineno}: duplicate token")
            ranks[tok] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise DataError(f"{path}: ranks are not exactly 0..{len(ranks) - 1}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise DataError(f"{path}: byte-level BPE must contain all 256 single bytes; missing {len(missing)}")
    return ranks


def _final_split(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Replay BPE on `token` using only merges ranked below `rank`; the two pieces left are its merge."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_at = r, i
        if best_at < 0:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    if len(parts) != 2:
        raise DataError(f"token {token!r} (rank {rank}) is not reachable by BPE merges of lower rank")
    return parts[0], parts[1]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """HF byte-level vocab (unicode strings → id = rank) and merges in rank order."""
    table = byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    vocab = {text(tok): rank for tok, rank in ordered}
    merges = [tuple(map(text, _final_split(tok, rank, ranks))) for tok, rank in ordered if len(tok) > 1]
    return vocab, merges


def chat_template() -> str:
    """Qwen3 chat template (Jinja) as shipped inside megarec."""
    return resources.files("megarec.tokenizer").joinpath("qwen3_chat_template.jinja").read_text("utf-8").rstrip("\n")


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def truncate_ranks(ranks: dict[bytes, int], bpe_ranks: int | None) -> dict[bytes, int]:
    """Keep the `bpe_ranks` most frequent merges (ranks below it). Every token's merge pieces rank lower
    than the token, so the kept set is itself a complete byte-level BPE (ranks 0..255 are the 256 bytes)."""
    if bpe_ranks is None or bpe_ranks >= len(ranks):
        return ranks
    single = sorted(r for tok, r in ranks.items() if len(tok) == 1)
    if bpe_ranks < len(single) or single[-1] >= bpe_ranks:
        raise MegarecError(f"--bpe-ranks {bpe_ranks} would drop single-byte tokens; use at least {single[-1] + 1}")
    return {tok: r for tok, r in ranks.items() if r < bpe_ranks}


def _tokenizer_json(tiktoken_path: str, bpe_ranks: int | None = None) -> str:
    """Serialized `tokenizers` Tokenizer for the ranks in `tiktoken_path` (optionally only the first
    `bpe_ranks`) plus Qwen3's added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    ranks = truncate_ranks(load_tiktoken_ranks(tiktoken_path), bpe_ranks)
    vocab, merges = vocab_and_merges(ranks)
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
            ignore_merges=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for content, special in QWEN3_ADDED_TOKENS:
        # add one at a time so ids follow the declared order exactly
        added = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    for i, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        if tok.token_to_id(content) != len(ranks) + i:
            raise MegarecError(
                f"added token {content} landed at id {tok.token_to_id(content)}, expected {len(ranks) + i}"
            )
    return tok.to_str()


def _cached_tokenizer_json(
    tiktoken_path: str, cache_dir: str | os.PathLike | None, bpe_ranks: int | None = None
) -> str:
    """tokenizer.json text, built once per tiktoken file content (sha256) and rank limit, kept in the cache."""
    key = f"{_file_sha256(tiktoken_path)[:16]}-v{_BUILD_FORMAT}" + (f"-r{bpe_ranks}" if bpe_ranks else "")
    cached = Path(cache_root(cache_dir)) / "qwen3_tokenizer" / key / "tokenizer.json"
    if cached.is_file():
        return cached.read_text("utf-8")
    text = _tokenizer_json(tiktoken_path, bpe_ranks)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cached, text)
    except OSError:
        pass  # a read-only cache only costs a rebuild next time
    return text


def _tokenizer_config(num_ranks: int, model_max_length: int) -> dict:
    decoder = {}
    for i, (content, special) in enumerate(QWEN3_ADDED_TOKENS):
        decoder[str(num_ranks + i)] = {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
    extra = [c for c, special in QWEN3_ADDED_TOKENS if special and c != PAD_TOKEN]
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        "bos_token": None,
        "chat_template": chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def build_qwen3_tokenizer(
    out_dir: str | os.PathLike,
    tiktoken_path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    bpe_ranks: int | None = None,
    force: bool = False,
) -> str:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for a Qwen3-layout tokenizer.

    `bpe_ranks` keeps only the first N BPE ranks (a smaller vocabulary with the same algorithm, regex,
    added tokens and chat template; the added tokens then start at id N). Loads offline with
    `transformers.AutoTokenizer.from_pretrained(out_dir)`. Returns `out_dir`, which must be missing or empty
    unless `force`, and is replaced only once all three files are written.
    """
    inputs = [("--tiktoken", tiktoken_path), ("--cache-dir", cache_dir)]
    check_out_dir(out_dir, force=force, inputs=inputs)
    tiktoken_path = str(tiktoken_path) if tiktoken_path is not None else ensure_qwen_tiktoken(cache_dir)
    if not os.path.isfile(tiktoken_path):
        raise DataError(f"{tiktoken_path}: tiktoken file not found")
    text = _cached_tokenizer_json(tiktoken_path, cache_dir, bpe_ranks)
    num_ranks = len(json.loads(text)["model"]["vocab"])
    config = _tokenizer_config(num_ranks, model_max_length)
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special_map = {
        "additional_special_tokens": config["additional_special_tokens"],
        "eos_token": {"content": EOS_TOKEN, **flags},
        "pad_token": {"content": PAD_TOKEN, **flags},
    }
    with staged_dir(out_dir, force=force, inputs=inputs) as stage:
        out = Path(stage)
        atomic_write_text(out / "tokenizer.json", text)
        atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(out / "special_tokens_map.json", json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
    return str(out_dir)
