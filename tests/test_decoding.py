"""Constrained item decoding on a tiny random Qwen3: trie, logits processor, beam search (trie loop and
HF backend) against exhaustive teacher-forced scoring, and constrained sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megarec.common.errors import ConfigError, DataError
from megarec.common.itemic import ItemicLayout
from megarec.decoding.beam_search import constrained_beam_search
from megarec.decoding.processor import ItemConstraintLogitsProcessor
from megarec.decoding.sampling import constrained_sample
from megarec.decoding.scoring import score_items
from megarec.decoding.trie import ItemTrie

VOCAB, FIRST, L, K = 64, 40, 3, 6  # 18 code tokens at 40..57, <|sid_begin|>=58, <|sid_end|>=59
META = dict(
    first_id=FIRST,
    last_id=FIRST + L * K + 1,
    num_layers=L,
    codebook_size=K,
    sid_begin_id=FIRST + L * K,
    sid_end_id=FIRST + L * K + 1,
    layer_letters=["a", "b", "c"],
    base_vocab_size=FIRST,
)


@pytest.fixture(scope="module")
def layout():
    return ItemicLayout.from_meta(META)


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        initializer_range=0.3,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return Qwen3ForCausalLM(cfg).eval()


def random_codes(n=15, seed=0):
    rng = np.random.default_rng(seed)
    codes: dict[str, tuple[int, ...]] = {}
    while len(codes) < n:
        c = tuple(int(x) for x in rng.integers(0, K, L))
        if c not in codes.values():
            codes[f"item{len(codes)}"] = c
    return codes


def narrow_codes():
    """15 items whose prefixes are few: 2 first codes, 5 two-code prefixes, 3 leaves each, so a beam of
    5 keeps every prefix and beam search is exact."""
    prefixes = [(0, 1), (0, 4), (2, 2), (2, 3), (2, 5)]
    return {f"n{i}": (*p, c) for i, (p, c) in enumerate((p, c) for p in prefixes for c in (0, 3, 5))}


def prompts(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1, FIRST, size)] for size in rng.integers(3, 12, n)]


def exhaustive_top_k(model, prompt, codes, layout, k):
    all_codes = list(dict.fromkeys(codes.values()))
    scores = score_items(model, prompt, all_codes, layout)
    order = np.argsort(scores)[::-1][:k]
    return [all_codes[i] for i in order], [scores[i] for i in order]


# ------------------------------------------------------------------------------------------ layout / trie


def test_layout_from_meta_json_and_tokenizer(tmp_path, layout):
    assert layout.codebook_sizes == (K, K, K)
    assert layout.token_id(1, 2) == FIRST + K + 2
    assert layout.code_of(FIRST + 2 * K + 5) == (2, 5)
    assert layout.item_ids((0, 1, 2)) == [58, 40, 47, 54, 59]
    assert layout.parse_items([1, 58, 40, 47, 54, 59, 58, 41, 41, 59, 58]) == [(0, 1, 2)]
    (tmp_path / "itemic.json").write_text(json.dumps(META))
    assert ItemicLayout.coerce(str(tmp_path)) == layout
    assert ItemicLayout.coerce(layout.to_dict()) == layout

    class Obj:  # duck-typed adapter (e.g. the itemic package's layout class)
        pass

    obj = Obj()
    for k_, v in META.items():
        setattr(obj, k_, v)
    assert ItemicLayout.coerce(obj) == layout

    class Tok:
        def get_vocab(self):
            v = {f"<s_{a}_{c}>": FIRST + i * K + c for i, a in enumerate("abc") for c in range(K)}
            return {**v, "<|sid_begin|>": 58, "<|sid_end|>": 59}

    assert ItemicLayout.from_tokenizer(Tok(), L, K) == layout
    with pytest.raises(ConfigError):
        ItemicLayout.coerce({"first_id": 1})


def test_trie_children_collisions_and_errors(layout):
    codes = {"x": (0, 1, 2), "y": (0, 1, 3), "z": (4, 4, 4), "w": (0, 1, 2)}
    trie = ItemTrie(codes, layout, popularity={"w": 3, "x": 1})
    t = layout.token_id
    assert sorted(trie.allowed(())) == [t(0, 0), t(0, 4)]
    assert list(trie.allowed([t(0, 0)])) == [t(1, 1)]
    assert sorted(trie.allowed([t(0, 0), t(1, 1)])) == [t(2, 2), t(2, 3)]
    assert len(trie.allowed([t(0, 1)])) == 0
    assert trie.items((0, 1, 2)) == ["w", "x"]
    assert trie.num_items == 4 and trie.num_leaves == 3
    with pytest.raises(DataError):
        ItemTrie({"bad": (0, 1, K)}, layout)
    doms = ItemTrie.per_domain(codes, {"x": "video", "z": "ad"}, layout)
    assert sorted(doms) == ["ad", "video"] and doms["ad"].all_codes() == [(4, 4, 4)]


def test_processor_masks(layout):
    codes = {"x": (0, 1, 2), "y": (0, 1, 3), "z": (4, 4, 4)}
    trie = ItemTrie(codes, layout)
    t, B, E = layout.token_id, layout.sid_begin_id, layout.sid_end_id
    proc = ItemConstraintLogitsProcessor(trie)
    ids = torch.tensor(
        [
            [5, 6, 7, 8, B],  # start of an item
            [5, 6, B, t(0, 0), t(1, 1)],  # last code
            [6, B, t(0, 4), t(1, 4), t(2, 4)],  # complete: only <|sid_end|>
            [B, t(0, 0), t(1, 1), t(2, 2), E],  # outside: no code tokens, no <|sid_end|>
        ]
    )
    out = proc(ids, torch.zeros(4, VOCAB))
    fin = [set(torch.isfinite(r).nonzero().flatten().tolist()) for r in out]
    assert fin[0] == {t(0, 0), t(0, 4)}
    assert fin[1] == {t(2, 2), t(2, 3)}
    assert fin[2] == {E}
    assert fin[3] == set(range(VOCAB)) - set(range(FIRST, FIRST + L * K)) - {E}
    forced = ItemConstraintLogitsProcessor(trie, prompt_length=2, force_item=True, eos_token_ids=[1])
    out = forced(torch.tensor([[5, 6], [7, 8]]), torch.zeros(2, VOCAB))
    assert [torch.isfinite(r).nonzero().flatten().tolist() for r in out] == [[B], [B]]
    done = torch.tensor([[5, 6, B, t(0, 4), t(1, 4), t(2, 4), E]])
    assert torch.isfinite(forced(done, torch.zeros(1, VOCAB))[0]).nonzero().flatten().tolist() == [1]
    # per-prompt tries, beam-major rows: rows 0-1 use trie A, rows 2-3 trie B
    other = ItemTrie({"q": (5, 5, 5)}, layout)
    per = ItemConstraintLogitsProcessor([trie, other])
    out = per(torch.tensor([[1, B]] * 4), torch.zeros(4, VOCAB))
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [t(0, 0), t(0, 4)]
    assert torch.isfinite(out[2]).nonzero().flatten().tolist() == [t(0, 5)]


# -------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("backend", ["trie", "hf"])
def test_beam_search_equals_exhaustive_when_beam_covers_prefixes(model, layout, backend):
    codes = narrow_codes()
    trie = ItemTrie(codes, layout)
    k = 5
    ps = prompts(4)
    results = constrained_beam_search(model, None, ps, trie, num_beams=k, batch_size=3, backend=backend)
    valid = set(codes.values())
    for p, cands in zip(ps, results):
        got = [c.codes for c in cands]
        assert len(got) == k and len(set(got)) == k and all(c in valid for c in got)
        lp = [c.logprob for c in cands]
        assert lp == sorted(lp, reverse=True)
        ref_codes, ref_scores = exhaustive_top_k(model, p, codes, layout, k)
        assert got == ref_codes
        np.testing.assert_allclose(lp, ref_scores, atol=1e-4)


def test_beam_search_random_codebook_wide_beam_is_exact(model, layout):
    codes = random_codes(15)
    trie = ItemTrie(codes, layout)
    ps = prompts(3, seed=7)
    res = constrained_beam_search(model, None, ps, trie, num_beams=6, beam_width=64)
    for p, cands in zip(ps, res):
        ref_codes, ref_scores = exhaustive_top_k(model, p, codes, layout, 6)
        assert [c.codes for c in cands] == ref_codes
        np.testing.assert_allclose([c.logprob for c in cands], ref_scores, atol=1e-4)
        assert all(c.items and codes[c.item] == c.codes for c in cands)
    # narrow beam: still k distinct real items, sorted, scores are the items' true log-probs
    res = constrained_beam_search(model, None, ps, trie, num_beams=4)
    for p, cands in zip(ps, res):
        got = [c.codes for c in cands]
        assert len(set(got)) == 4 and set(got) <= set(codes.values())
        np.testing.assert_allclose([c.logprob for c in cands], score_items(model, p, got, layout), atol=1e-4)


def test_more_beams_than_items_and_score_end(model, layout):
    codes = random_codes(4, seed=3)
    trie = ItemTrie(codes, layout)
    ps = prompts(2)
    res = constrained_beam_search(model, None, ps, trie, num_beams=10, score_end=True)
    for p, cands in zip(ps, res):
        assert sorted(c.codes for c in cands) == sorted(codes.values())
        ref = score_items(model, p, [c.codes for c in cands], layout, score_end=True)
        np.testing.assert_allclose([c.logprob for c in cands], ref, atol=1e-4)


def test_per_prompt_tries(model, layout):
    a = ItemTrie({"a1": (0, 0, 0), "a2": (0, 1, 1)}, layout)
    b = ItemTrie({"b1": (5, 5, 5), "b2": (4, 1, 1), "b3": (4, 1, 2)}, layout)
    res = constrained_beam_search(model, None, prompts(2), [a, b], num_beams=3)
    assert {c.item for c in res[0]} == {"a1", "a2"}
    assert {c.item for c in res[1]} == {"b1", "b2", "b3"}


def test_constraint_is_active(model, layout):
    """Unconstrained beam search from `<|sid_begin|>` leaves the catalogue; constrained never does."""
    codes = random_codes(15)
    trie = ItemTrie(codes, layout)
    ps = prompts(4)
    ids = torch.tensor(
        [p + [layout.sid_begin_id] for p in ps if len(p) == len(ps[0])] or [ps[0] + [layout.sid_begin_id]]
    )
    free = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        num_beams=5,
        num_return_sequences=5,
        max_new_tokens=L,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    free_items = [tuple(r) for r in free[:, ids.shape[1] :].tolist()]
    assert not all(trie.is_item(r) for r in free_items)
    cons = constrained_beam_search(model, None, [ids[0].tolist()], trie, num_beams=5)[0]
    assert all(trie.is_item(layout.code_ids(c.codes)) for c in cons)
    assert [layout.code_ids(c.codes) for c in cons] != [list(r) for r in free_items]


def test_constrained_sampling_only_yields_items(model, layout):
    codes = random_codes(15)
    trie = ItemTrie(codes, layout)
    ps = prompts(3)
    for kwargs in ({}, {"temperature": 2.0, "top_k": 3}, {"top_p": 0.5}):
        res = constrained_sample(model, None, ps, trie, num_samples=8, seed=0, **kwargs)
        assert [len(r) for r in res] == [8, 8, 8]
        for cands in res:
            assert all(c.codes in set(codes.values()) and c.item is not None for c in cands)
            assert all(np.isfinite(c.logprob) for c in cands)
    # high temperature, many samples: more than one distinct item gets sampled
    res = constrained_sample(model, None, ps[:1], trie, num_samples=32, temperature=3.0, seed=1)
    assert len({c.codes for c in res[0]}) > 1


def test_decoding_reads_the_layout_vocabulary_expansion_writes(layout, tmp_path):
    """One layout class: what expansion creates and saves is what decoding reads back, id for id."""
    created = ItemicLayout.create(base_vocab_size=FIRST, num_layers=L, codebook_size=K)
    created.save(tmp_path)
    assert ItemicLayout.coerce(str(tmp_path)) == created == layout
    assert all(layout.token_id(l_, c) == FIRST + l_ * K + c for l_ in range(L) for c in range(K))
    with pytest.raises(DataError, match="field 'sid_begin_id' is 57"):
        ItemicLayout.from_meta({**META, "sid_begin_id": 57})
