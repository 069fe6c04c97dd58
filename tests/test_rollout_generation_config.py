"""Policy samples come from exactly the distribution megarec records, whatever the checkpoint's own
generation_config says (Qwen3 ships temperature 0.6, top-k 20, top-p 0.95; transformers 4.5x would swap
those in for every value of ours that equals the library default and apply them after our processors)."""

from __future__ import annotations

import collections

import pytest
import torch

from megarec.posttrain.rollout import SamplingSpec, sample

import posttrain_tiny as tiny

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FIXED = [0.0, 1.0, 2.0, 3.0]  # logits of the four allowed tokens at the first step


class _FixedLogits:
    """Constraint-like processor: only four tokens allowed, with fixed logits (model-independent)."""

    def __init__(self, ids):
        self.ids = torch.tensor(ids)

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, float("-inf"))
        out[:, self.ids] = torch.tensor(FIXED, dtype=scores.dtype)
        return out


@pytest.fixture(scope="module")
def qwen3_like_checkpoint(tmp_path_factory):
    from transformers import AutoModelForCausalLM, GenerationConfig

    d = tmp_path_factory.mktemp("gencfg")
    tiny.build_tokenizer(str(d / "tok"))
    tiny.build_model(str(d / "m"), str(d / "tok"), seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(d / "m"))
    gc = GenerationConfig(
        do_sample=True,
        temperature=0.6,
        top_k=20,
        top_p=0.95,  # Qwen3's shipped values
        pad_token_id=model.generation_config.pad_token_id,
        eos_token_id=model.generation_config.eos_token_id,
    )
    gc.save_pretrained(str(d / "m"))
    return str(d / "m")


def _tv(counts: collections.Counter, ids, probs) -> float:
    n = sum(counts.values())
    return 0.5 * sum(abs(counts.get(i, 0) / n - p) for i, p in zip(ids, probs))


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_samples_follow_recorded_distribution_despite_checkpoint_defaults(qwen3_like_checkpoint, temperature):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen3_like_checkpoint).eval()
    assert model.generation_config.temperature == 0.6 and model.generation_config.top_p == 0.95
    ids = [10, 11, 12, 13]
    n = 4000
    spec = SamplingSpec(
        max_new_tokens=1,
        temperature=temperature,
        processors=lambda w, b: [_FixedLogits(ids)],
        record_logprobs=True,
        batch_size=n,
    )
    r = sample(
        model,
        [[1, 2, 3]] * n,
        spec,
        pad_token_id=0,
        vocab_size=model.config.vocab_size,
        device=torch.device("cpu"),
        seed=0,
    )
    counts = collections.Counter(resp[0] for resp in r.responses)
    assert set(counts) <= set(ids)
    want = torch.softmax(torch.tensor(FIXED) / temperature, 0).tolist()
    qwen = torch.softmax(torch.tensor(FIXED) / temperature / 0.6, 0).tolist()  # what a 0.6 warper would give
    assert _tv(counts, ids, want) < 0.03, (counts, want)
    assert _tv(counts, ids, qwen) > 0.08, (counts, qwen)
    # the recorded per-token log-probs are those of the intended distribution
    lp = {resp[0]: r.sample_logprobs[k][0] for k, resp in enumerate(r.responses)}
    for tok, logp in lp.items():
        assert logp == pytest.approx(float(torch.log(torch.tensor(want[ids.index(tok)]))), abs=1e-5)
    # and the checkpoint's own generation config is left as it was
    assert model.generation_config.temperature == 0.6 and model.generation_config.top_k == 20
