"""Tokenizer side of vocabulary expansion: append the itemic tokens to a HF tokenizer, ids checked."""

from __future__ import annotations

from megarec.common.errors import DataError
from megarec.common.itemic import ItemicLayout, itemic_token_strings


def add_itemic_tokens(
    tokenizer, num_layers: int, codebook_size: int, padded_vocab_size: int | None = None
) -> ItemicLayout:
    """Append `<s_a_0>`..`<|sid_end|>` after every existing entry (first id = len(tokenizer)).

    Tokens are plain (non-special) added tokens, matched whole and never split, and kept by
    `decode(skip_special_tokens=True)`, so generated items survive decoding."""
    from tokenizers import AddedToken

    tokens = itemic_token_strings(num_layers, codebook_size)
    base = len(tokenizer)
    vocab = tokenizer.get_vocab()
    clash = next((t for t in tokens if t in vocab), None)
    if clash is not None:
        raise DataError(
            f"the base tokenizer already contains {clash} (id {vocab[clash]}); "
            "expand an original checkpoint, not an expanded one"
        )
    added = tokenizer.add_tokens(
        [AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False) for t in tokens]
    )
    layout = ItemicLayout.create(base, num_layers, codebook_size, padded_vocab_size)
    got = tokenizer.convert_tokens_to_ids([tokens[0], tokens[-1]])
    if added != len(tokens) or got != [layout.first_id, layout.last_id] or len(tokenizer) != layout.last_id + 1:
        raise DataError(
            f"itemic tokens landed at ids {got} (expected {layout.first_id}..{layout.last_id}); "
            "the base tokenizer's added-token ids are not contiguous"
        )
    return layout
