"""A Hugging Face fast tokenizer directory without importing transformers' tokenizer classes (which pull
in torch and take seconds per process): the Rust `tokenizers.Tokenizer` from tokenizer.json, special
tokens from tokenizer_config.json / special_tokens_map.json, and the chat template rendered by
transformers' own Jinja renderer, so the text is exactly what `apply_chat_template` produces.

`FastTokenizer.text_encoder()` builds the C++ batch encoder (csrc/text_encoder.cpp) for this tokenizer: added
tokens are split off exactly as the Rust tokenizer does it, and when the tokenizer is a byte-level BPE with
the Qwen2/Qwen3 pre-tokenizer (checked field by field in tokenizer.json), ASCII text is BPE-encoded in C++
with the tokenizer's own merges. Anything not covered goes to the Rust tokenizer, so ids never change.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from megarec.common.bytelevel import byte_to_unicode
from megarec.common.errors import ConfigError

EOD_TOKEN = "<|endoftext|>"
# The Qwen2/Qwen3 pre-tokenizer split pattern: the only one the C++ BPE implements (for ASCII text).
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
FAST_ENCODER_ENV = "MEGAREC_FAST_ENCODER"  # "0": every text goes to the Rust tokenizer; "split": no C++ BPE


def _content(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def tokenizer_fingerprint(path: str) -> dict:
    """`FastTokenizer(path).fingerprint()`: {"vocab_size": N, "sha256": ...} of a tokenizer directory."""
    return FastTokenizer(path).fingerprint()


class FastTokenizer:
    def __init__(self, path: str):
        from tokenizers import Tokenizer

        if not os.path.isdir(path):
            raise ConfigError(f"--tokenizer: directory not found: {path}")
        tj = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tj):
            raise ConfigError(f"--tokenizer {path}: no tokenizer.json (a fast tokenizer is required)")
        self.path = path
        self.backend = Tokenizer.from_file(tj)
        # whole documents, as `tokenizer(text)` gives them: truncation/padding saved in tokenizer.json are off
        self.backend.no_truncation()
        self.backend.no_padding()
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        special = _read_json(os.path.join(path, "special_tokens_map.json"))
        self.special_tokens = {
            k: _content(config.get(k, special.get(k))) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        template = config.get("chat_template")
        jinja = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        if isinstance(template, list):  # named templates: use "default"
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        self.chat_template: Optional[str] = template if isinstance(template, str) else None

    @property
    def vocab_size(self) -> int:
        """Number of ids including added tokens (what len(AutoTokenizer) reports)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def fingerprint(self) -> dict:
        """What `megarec preprocess` records of the tokenizer in `P.preprocess.json` and `megarec pretrain`
        compares with data.tokenizer: the number of ids and a hash of every (id, token) of the vocabulary and
        every added token (content, special), so two tokenizers that give different ids never match."""
        import hashlib

        h = hashlib.sha256()
        vocab = self.backend.get_vocab(with_added_tokens=True)
        h.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode("utf-8"))
        added = sorted(self.backend.get_added_tokens_decoder().items())
        h.update(json.dumps([[i, t.content, bool(t.special)] for i, t in added], ensure_ascii=False).encode("utf-8"))
        return {"vocab_size": self.vocab_size, "sha256": h.hexdigest()[:16]}

    def token_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    @property
    def eod(self) -> int:
        """`<|endoftext|>` if the vocabulary has it, else the eos token (never a constant)."""
        for token in (EOD_TOKEN, self.special_tokens.get("eos_token")):
            if token and self.token_id(token) is not None:
                return int(self.token_id(token))
        raise ConfigError(f"--tokenizer {self.path}: defines neither {EOD_TOKEN} nor an eos token")

    def text_encoder(self):
        """The C++ batch encoder for this tokenizer (`megarec._cpp.TextEncoder`), or None when its added tokens
        are not plain (lstrip/rstrip/single_word, or special tokens encoded as text): then the Rust tokenizer
        does everything. `.has_bpe` tells whether ASCII text is BPE-encoded in C++ too."""
        mode = os.environ.get(FAST_ENCODER_ENV, "1")
        if mode == "0" or getattr(self.backend, "encode_special_tokens", False):
            return None
        added, normalized, plain_normalized = [], [], True
        for token_id, tok in sorted(self.backend.get_added_tokens_decoder().items()):
            if tok.normalized:
                plain_normalized &= not (tok.lstrip or tok.rstrip or tok.single_word)
                if tok.content.isascii() and tok.content:  # non-ASCII ones never match inside ASCII text
                    normalized.append((tok.content.encode("utf-8"), int(token_id)))
                continue
            if tok.lstrip or tok.rstrip or tok.single_word:
                return None
            if tok.content:
                added.append((tok.content.encode("utf-8"), int(token_id)))
        from megarec import _cpp

        try:
            bpe = None if mode == "split" or not plain_normalized else self._byte_bpe_spec()
        except (ValueError, TypeError, KeyError, AttributeError):  # an unexpected tokenizer.json layout
            bpe = None
        if bpe is not None:
            bpe["normalized_added"] = normalized
        return _cpp.TextEncoder(added, bpe)

    def _byte_bpe_spec(self) -> Optional[dict]:
        """Vocabulary and merges for the C++ BPE if tokenizer.json is exactly a byte-level BPE with the Qwen2/3
        split pattern and at most NFC normalisation (an identity on ASCII); otherwise None."""
        with open(os.path.join(self.path, "tokenizer.json"), encoding="utf-8") as f:
            spec = json.load(f)
        norm, pre, model = spec.get("normalizer"), spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        if (
            norm is not None
            and norm != {"type": "NFC"}
            and not (norm.get("type") == "Sequence" and all(n == {"type": "NFC"} for n in norm.get("normalizers", [])))
        ):
            return None
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
        if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
            return None
        split, level = steps
        if (
            split.get("pattern") != {"Regex": QWEN2_SPLIT_REGEX}
            or split.get("behavior") != "Isolated"
            or split.get("invert")
            or level.get("add_prefix_space")
            or level.get("use_regex")
        ):
            return None
        if (
            model.get("type") != "BPE"
            or model.get("dropout") is not None
            or model.get("byte_fallback")
            or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix")
        ):
            return None
        to_byte = {ch: b for b, ch in byte_to_unicode().items()}
        vocab: dict = model.get("vocab") or {}

        def raw(token: str) -> Optional[bytes]:
            try:
                return bytes(to_byte[ch] for ch in token)
            except KeyError:
                return None

        byte_ids = [vocab.get(byte_to_unicode()[b]) for b in range(256)]
        if any(i is None for i in byte_ids):
            return None
        merges = []
        for m in model.get("merges") or []:
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            ids = vocab.get(a), vocab.get(b), vocab.get(a + b)
            if None in ids:
                return None  # tokenizers itself refuses such a file
            merges.append(ids)
        whole = None
        if model.get("ignore_merges"):
            whole = {}
            for token, token_id in vocab.items():
                b = raw(token)
                if b is None:
                    return None
                whole[b] = token_id
        return {"byte_ids": byte_ids, "merges": merges, "whole_words": whole}

    def render_chat(self, messages: list[dict], **kwargs) -> str:
        """The chat template applied to one conversation (no generation prompt unless asked)."""
        if not self.chat_template:
            raise ConfigError(f"--tokenizer {self.path}: has no chat template")
        from transformers.utils.chat_template_utils import render_jinja_template

        values = {k: v for k, v in self.special_tokens.items() if v is not None}
        values.update(kwargs)
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.chat_template, **values)
        return rendered[0]
