"""Rows → token ids (+ chat loss mask) with a Hugging Face fast tokenizer, one batch at a time.

Kinds of rows:
* text      {"text": str}  (field name configurable) → tokenizer(text) ids
* segments  {"segments": [{"type": "text", "text": str} | {"type": "itemic", "codes": [[c1..cL], ...]}]}
            text segments are joined and tokenised; itemic segments become ids straight from the codes
            (C++ interleaver, ids from itemic.json) — identical to tokenising their token strings
* messages  {"messages": [{"role": ..., "content": ...}]} rendered with the tokenizer's chat template; the
            rendered text is split at the assistant header so the header is always its own tokens (as at
            generation time), and the loss mask (C++) marks every assistant token after the header up to and
            including the end token (Qwen3: "<|im_start|>assistant\\n" ... "<|im_end|>").
Every document ends with the EOD id (`<|endoftext|>` if the vocabulary has it, else the eos id).
Bad rows are returned as rejects (row, reason), never silently dropped. Text written like itemic tokens
(`<|sid_begin|><s_a_7>...`) must consist of tokens of the tokenizer: otherwise the row is refused (a tokenizer
without itemic tokens, or a code beyond the codebook, would split it silently into ordinary pieces) unless
`allow_unknown_itemic` asks for exactly that.

A batch is encoded by the C++ `TextEncoder` (see hf_tokenizer.py): added tokens such as itemic tokens become
ids without passing through the Rust tokenizer, ASCII text of a Qwen2/3-style byte-level BPE is encoded in
C++, and only the remaining text (e.g. non-ASCII) goes to `encode_batch_fast` — the ids are the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from megarec.common.errors import ConfigError, DataError
from megarec.common.itemic import CODE_TOKEN_RE, ITEMIC_TEXT_RE, SID_BEGIN

KINDS = ("text", "segments", "messages")
ROLES = ("system", "user", "assistant", "tool")
DEFAULT_ASSISTANT_HEADER = "<|im_start|>assistant\n"
DEFAULT_ASSISTANT_END = "<|im_end|>"


def detect_kind(record: Any, json_key: str = "text") -> Optional[str]:
    if isinstance(record, dict):
        if "messages" in record:
            return "messages"
        if "segments" in record:
            return "segments"
        if json_key in record:
            return "text"
    return None


@dataclass
class EncodedBatch:
    """Kept documents (ids concatenated, one length each, EOD included), optional mask, and rejects."""

    ids: np.ndarray
    lengths: np.ndarray
    mask: Optional[np.ndarray]
    rows: list[int]
    rejects: list[tuple[int, str]] = field(default_factory=list)


class DocumentEncoder:
    def __init__(
        self,
        tokenizer_dir: str,
        kind: str,
        *,
        json_key: str = "text",
        itemic: Optional[str] = None,
        assistant_header: str = DEFAULT_ASSISTANT_HEADER,
        assistant_end: str = DEFAULT_ASSISTANT_END,
        max_length: Optional[int] = None,
        allow_unknown_itemic: bool = False,
    ):
        if kind not in KINDS:
            raise ConfigError(f"--kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.json_key = json_key
        self.max_length = max_length
        from megarec.data.hf_tokenizer import FastTokenizer

        self.tok = FastTokenizer(tokenizer_dir)
        self.backend = self.tok.backend
        self.vocab_size = self.tok.vocab_size
        self.eod = self.tok.eod
        self.prefix, self.suffix = self._special_wrapping()
        self.fast = self.tok.text_encoder()
        self.allow_unknown_itemic = allow_unknown_itemic
        self.added_tokens = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        self.itemic = None
        itemic = itemic or (
            os.path.join(tokenizer_dir, "itemic.json")
            if os.path.isfile(os.path.join(tokenizer_dir, "itemic.json"))
            else None
        )
        if itemic:
            from megarec.common.itemic import ItemicLayout

            self.itemic = ItemicLayout.load(itemic)
        self.header_text = assistant_header
        self.header_ids: list[int] = []
        self.end_id: Optional[int] = None
        if kind == "messages":
            if not self.tok.chat_template:
                raise ConfigError(f"--tokenizer {tokenizer_dir}: has no chat template (needed for --kind messages)")
            import transformers.utils.chat_template_utils  # noqa: F401  (import once, before workers fork)

            self.header_ids = self.backend.encode(assistant_header, add_special_tokens=False).ids
            end = self.backend.encode(assistant_end, add_special_tokens=False).ids
            if not self.header_ids or len(end) != 1:
                raise ConfigError(
                    f"assistant end marker {assistant_end!r} must be one token of the tokenizer "
                    f"(got {len(end)}); header {assistant_header!r} must be non-empty"
                )
            self.end_id = end[0]

    def _special_wrapping(self) -> tuple[list[int], list[int]]:
        """Ids the tokenizer adds around a single text (e.g. BOS), found by comparing encodings."""
        probe = "megarec probe"
        plain = self.backend.encode(probe, add_special_tokens=False).ids
        full = self.backend.encode(probe, add_special_tokens=True).ids
        for i in range(len(full) - len(plain) + 1):
            if full[i : i + len(plain)] == plain:
                return full[:i], full[i + len(plain) :]
        return [], []

    def _check_itemic_text(self, text: str, field: str) -> None:
        """ValueError when `text` holds something written like an itemic token that is not a token of the
        tokenizer (the Rust tokenizer would split it into ordinary pieces without a word)."""
        if self.allow_unknown_itemic or "<" not in text:
            return
        unknown = set(ITEMIC_TEXT_RE.findall(text)) - self.added_tokens
        if not unknown:
            return
        token = min(unknown, key=text.index)  # the first one in the text
        if SID_BEGIN not in self.added_tokens:
            why = "the tokenizer has no itemic tokens (use the one `megarec expand-vocab` wrote)"
        elif self.itemic is not None and CODE_TOKEN_RE.fullmatch(token):
            letter, code = CODE_TOKEN_RE.fullmatch(token).groups()
            letters = self.itemic.layer_letters
            why = (
                f"code {code} is not below the codebook size {self.itemic.codebook_size}"
                if letter in letters
                else f"the tokenizer's itemic layers are {', '.join(letters)}"
            )
        else:
            why = "the tokenizer has no such token (a code beyond its codebook or layers?)"
        raise ValueError(
            f"field '{field}': {token} at character {text.index(token)} is not a token of the tokenizer: {why}; "
            "pass --allow-unknown-itemic-tokens to tokenise such text as ordinary text"
        )

    # --- row → pieces -----------------------------------------------------------------------------------

    def _pieces(self, rec: Any) -> tuple[list, int]:
        """(pieces: str to tokenise or list/array of ids, number of assistant turns); raises ValueError."""
        if isinstance(rec, DataError):
            raise ValueError(str(rec).split(": ", 2)[-1])
        if not isinstance(rec, dict):
            raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
        if self.kind == "text":
            text = rec.get(self.json_key)
            if not isinstance(text, str):
                raise ValueError(
                    f"field '{self.json_key}': expected a string"
                    if self.json_key in rec
                    else f"field '{self.json_key}': missing"
                )
            if not text:
                raise ValueError(f"field '{self.json_key}': empty text")
            self._check_itemic_text(text, self.json_key)
            return [self.prefix, text, self.suffix], 0
        if self.kind == "segments":
            return self._segment_pieces(rec.get("segments")), 0
        return self._message_pieces(rec.get("messages"))

    def _segment_pieces(self, segments: Any) -> list:
        if not isinstance(segments, list) or not segments:
            raise ValueError("field 'segments': expected a non-empty list")
        pieces: list = [self.prefix]
        text: list[str] = []
        for k, seg in enumerate(segments):
            kind = seg.get("type") if isinstance(seg, dict) else None
            if kind == "text":
                if not isinstance(seg.get("text"), str):
                    raise ValueError(f"field 'segments[{k}].text': expected a string")
                self._check_itemic_text(seg["text"], f"segments[{k}].text")
                text.append(seg["text"])
            elif kind == "itemic":
                if self.itemic is None:
                    raise ValueError(f"field 'segments[{k}]': itemic segment but no itemic.json (pass --itemic)")
                try:
                    codes = np.asarray(seg.get("codes"), dtype=np.int64)
                except (TypeError, ValueError):
                    raise ValueError(f"field 'segments[{k}].codes': expected [[c1..cL], ...]") from None
                if codes.ndim == 1:
                    codes = codes[None, :]
                try:
                    ids = self.itemic.token_ids(codes)
                except DataError as e:
                    raise ValueError(f"field 'segments[{k}].codes': {e}") from None
                if text:
                    pieces.append("".join(text))
                    text = []
                pieces.append(ids)
            else:
                raise ValueError(f"field 'segments[{k}].type': expected 'text' or 'itemic', got {kind!r}")
        if text:
            pieces.append("".join(text))
        pieces.append(self.suffix)
        if not any(isinstance(p, str) and p for p in pieces) and not any(
            isinstance(p, np.ndarray) and p.size for p in pieces
        ):
            raise ValueError("field 'segments': empty document")
        return pieces

    def _message_pieces(self, messages: Any) -> tuple[list, int]:
        if not isinstance(messages, list) or not messages:
            raise ValueError("field 'messages': expected a non-empty list")
        turns = 0
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise ValueError(f"field 'messages[{k}].role': expected one of {ROLES}")
            if not isinstance(m.get("content"), str):
                raise ValueError(f"field 'messages[{k}].content': expected a string")
            self._check_itemic_text(m["content"], f"messages[{k}].content")
            turns += m["role"] == "assistant"
        if not turns:
            raise ValueError("field 'messages': no assistant message (nothing to train on)")
        try:
            rendered = self.tok.render_chat(messages)
        except Exception as e:  # jinja errors
            raise ValueError(f"field 'messages': chat template failed ({type(e).__name__}: {e})") from None
        parts = rendered.split(self.header_text)
        pieces: list = [parts[0]]
        for part in parts[1:]:
            pieces += [self.header_ids, part]
        return pieces, turns

    # --- batch ---------------------------------------------------------------------------------------------

    def _token_ids(self, pieces: list, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Documents of pieces (str to tokenise, or ids) → (ids int32, lengths int32), EOD appended."""
        from megarec import _cpp

        if self.fast is not None:
            plan, holes = self.fast.plan(pieces, counts)
            hole_ids = [e.ids for e in self.backend.encode_batch_fast(holes, add_special_tokens=False)] if holes else []
            return plan.fill(hole_ids, self.eod)
        slots = [k for k, p in enumerate(pieces) if isinstance(p, str)]
        if slots:
            encs = self.backend.encode_batch_fast([pieces[k] for k in slots], add_special_tokens=False)
            for k, enc in zip(slots, encs):
                pieces[k] = enc.ids
        return _cpp.concat_documents(pieces, counts, self.eod)

    def encode(self, rows: list[tuple[int, Any]]) -> EncodedBatch:
        from megarec import _cpp

        pieces: list = []
        counts: list[int] = []
        turns: list[int] = []
        kept_rows: list[int] = []
        rejects: list[tuple[int, str]] = []
        for row, rec in rows:
            try:
                doc, n_turns = self._pieces(rec)
            except ValueError as e:
                rejects.append((row, str(e)))
                continue
            pieces.extend(doc)
            counts.append(len(doc))
            turns.append(n_turns)
            kept_rows.append(row)
        ids, lengths = self._token_ids(pieces, np.asarray(counts, dtype=np.int64))
        mask = None
        keep = np.ones(len(kept_rows), dtype=bool)
        if self.kind == "messages" and len(kept_rows):
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            mask, spans, unterminated = _cpp.assistant_loss_mask(ids, offsets, self.header_ids, self.end_id)
            for d in np.flatnonzero((spans != np.asarray(turns)) | (unterminated > 0)):
                keep[d] = False
                rejects.append(
                    (
                        kept_rows[d],
                        f"field 'messages': found {spans[d]} assistant spans "
                        f"({unterminated[d]} unterminated) for {turns[d]} assistant turns; "
                        "does some content contain the chat template's markers?",
                    )
                )
        if self.max_length is not None:
            for d in np.flatnonzero(lengths > self.max_length):
                if keep[d]:
                    keep[d] = False
                    rejects.append(
                        (
                            kept_rows[d],
                            f"sample has {lengths[d]} tokens (EOD included), longer than "
                            f"--seq-length {self.max_length}",
                        )
                    )
        if not keep.all():
            token_keep = np.repeat(keep, lengths)
            ids, lengths = ids[token_keep], lengths[keep]
            mask = mask[token_keep] if mask is not None else None
            kept_rows = [r for r, k in zip(kept_rows, keep) if k]
        rejects.sort()
        return EncodedBatch(ids, lengths, mask, kept_rows, rejects)
