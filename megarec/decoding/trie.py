"""Prefix trie over the code tuples of real items, in token-id space.

A node is the tuple of code token ids generated after `<|sid_begin|>`; its children are the token ids
that continue at least one real item. Items that share a code tuple (codebook collisions) are kept
together at the leaf, most popular first. Build one trie per domain to restrict decoding to a catalogue.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from megarec.common.errors import DataError
from megarec.common.itemic import CodeToItems, ItemicLayout

_EMPTY = np.zeros(0, dtype=np.int64)


class ItemTrie:
    """Valid continuations of every item prefix, plus the leaf → items map."""

    def __init__(
        self,
        item_codes: Mapping[Hashable, Sequence[int]],
        layout,
        *,
        popularity: Mapping[Hashable, float] | None = None,
    ):
        self.layout = ItemicLayout.coerce(layout)
        if not item_codes:
            raise DataError("cannot build an item trie from an empty codes table")
        L = self.layout.num_layers
        items = list(item_codes)
        for it in items:
            if len(item_codes[it]) != L:
                raise DataError(f"item {it!r} has {len(item_codes[it])} codes, the item layout has {L} layers")
        codes = np.asarray([list(item_codes[i]) for i in items], dtype=np.int64).reshape(len(items), L)
        toks = np.empty_like(codes)
        for layer, size in enumerate(self.layout.codebook_sizes):
            col = codes[:, layer]
            bad = (col < 0) | (col >= size)
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(f"item {items[i]!r}: code c{layer + 1}={int(col[i])} outside codebook of size {size}")
            toks[:, layer] = np.asarray(self.layout.code_token_ids[layer], dtype=np.int64)[col]
        self._children: dict[tuple[int, ...], np.ndarray] = {}
        for depth in range(L):
            uniq = np.unique(toks[:, : depth + 1], axis=0)
            if depth == 0:
                self._children[()] = uniq[:, 0].copy()
                continue
            change = np.any(uniq[1:, :depth] != uniq[:-1, :depth], axis=1)
            starts = np.r_[0, np.flatnonzero(change) + 1, len(uniq)]
            for s, e in zip(starts[:-1], starts[1:]):
                self._children[tuple(int(t) for t in uniq[s, :depth])] = uniq[s:e, depth].copy()
        self.code_to_items = CodeToItems(item_codes, popularity)
        self.num_items = len(items)
        self.num_leaves = len(np.unique(codes, axis=0))

    @classmethod
    def per_domain(
        cls,
        item_codes: Mapping[Hashable, Sequence[int]],
        item_domain: Mapping[Hashable, str],
        layout,
        *,
        popularity: Mapping[Hashable, float] | None = None,
    ) -> dict[str, "ItemTrie"]:
        """One trie per domain (items without a domain are left out)."""
        groups: dict[str, dict] = {}
        for item, codes in item_codes.items():
            dom = item_domain.get(item)
            if dom is not None:
                groups.setdefault(str(dom), {})[item] = codes
        return {dom: cls(codes, layout, popularity=popularity) for dom, codes in groups.items()}

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    def allowed(self, prefix: Sequence[int]) -> np.ndarray:
        """Token ids that continue `prefix` (code token ids after `<|sid_begin|>`) towards a real item;
        empty for an invalid or complete prefix."""
        return self._children.get(tuple(int(t) for t in prefix), _EMPTY)

    def is_item(self, token_prefix: Sequence[int]) -> bool:
        """True when these code token ids spell a real item."""
        codes = self.codes_of(token_prefix)
        return codes is not None and bool(self.code_to_items.items(codes))

    def codes_of(self, token_prefix: Sequence[int]) -> tuple[int, ...] | None:
        """Code tuple of a full code-token sequence, or None if it is not L in-order code tokens."""
        if len(token_prefix) != self.num_layers:
            return None
        out = []
        for layer, t in enumerate(token_prefix):
            lc = self.layout.code_of(t)
            if lc is None or lc[0] != layer:
                return None
            out.append(lc[1])
        return tuple(out)

    def items(self, codes: Sequence[int]) -> list:
        """Items with these codes, most popular first."""
        return self.code_to_items.items(codes)

    def all_codes(self) -> list[tuple[int, ...]]:
        """Every distinct valid code tuple (leaf), in no particular order."""
        return list(self.code_to_items._items)
