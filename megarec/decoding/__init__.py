"""Constrained item decoding shared by evaluation and post-training: a prefix
trie over the code tuples of real items, a `transformers.LogitsProcessor` that keeps generation on
that trie, and batched beam search / sampling that only ever produce real items."""
