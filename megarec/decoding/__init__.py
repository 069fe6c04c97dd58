"""Constrained item decoding shared by evaluation and post-training: the token layout of items, a prefix
trie over the code tuples of real items, a `transformers.LogitsProcessor` that keeps generation on
that trie, and batched beam search / sampling that only ever produce real items."""
from megarec.decoding.layout import ItemTokenLayout
from megarec.decoding.trie import ItemTrie

__all__ = ["ItemTokenLayout", "ItemTrie"]
