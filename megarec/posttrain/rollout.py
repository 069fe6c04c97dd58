"""Policy sampling with `transformers` `generate(do_sample=True)`: true samples of the policy (never beam
search), optionally through constraint logits processors (the item trie from `megarec.decoding`).

What was allowed at every sampled position is recorded (as indices into a table of distinct masks), so
that training can recompute log-probs under exactly the distribution that produced the sample. The
sampling distribution is softmax((logits masked by the processors) / temperature); no top-k / top-p
(those would make the samples and the importance ratios disagree). Every other generation default of
the checkpoint (Qwen3 ships temperature 0.6, top-k 20, top-p 0.95) is overridden explicitly, and the
checkpoint's own `generation_config` is swapped for ours during the call (`_own_generation_config`): transformers
4.5x replaces every value of a passed config that equals the library default (temperature 1.0, top-p 1.0, ...)
by the checkpoint's value and appends the resulting warpers after our recorded processors, so samples would come
from another distribution than the one recorded and trained on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from megarec.decoding.batching import left_pad


@dataclass
class SamplingSpec:
    max_new_tokens: int
    temperature: float = 1.0
    eos_token_ids: Sequence[int] = ()
    # (padded prompt width) -> constraint processors for one generate() call (rows laid out as given)
    processors: Optional[Callable[[int, int], list]] = None
    stop_token_ids: Sequence[int] = ()  # a trajectory ends (inclusive) at the first of these
    record_masks: bool = False
    batch_size: int = 64
    vocab_limit: Optional[int] = None  # ids >= this (embedding padding rows) are never sampled
    record_logprobs: bool = False  # keep log p(sampled token) under the processed sampling distribution


@dataclass
class Rollout:
    """Sampled completions of one rank. Row i = prompts[i] + responses[i]."""

    prompts: list[list[int]]
    responses: list[list[int]]
    finished: list[bool]  # ended on an EOS / stop token (else truncated)
    mask_ids: Optional[list[list[int]]] = None  # per response token: row of mask_table, or -1
    mask_table: list[np.ndarray] = field(default_factory=list)  # np.packbits of allowed-token masks
    vocab_size: int = 0
    sample_logprobs: Optional[list[list[float]]] = None  # per response token, as sampled

    def __len__(self) -> int:
        return len(self.responses)

    def masks_tensor(self, used: Sequence[int], device=None) -> torch.Tensor:
        """[len(used), V] bool masks for the given table rows."""
        if not used:
            return torch.zeros((0, self.vocab_size), dtype=torch.bool, device=device)
        bits = np.stack([np.unpackbits(self.mask_table[i], count=self.vocab_size) for i in used]).astype(bool)
        return torch.from_numpy(bits).to(device)


class _VocabLimit:
    """Logits processor masking the embedding rows past the tokenizer (padding rows)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] > self.limit:
            scores = scores.clone()
            scores[:, self.limit :] = float("-inf")
        return scores


class _MaskRecorder:
    """Logits processor (last in the constraint chain, before temperature) that records which tokens were
    still allowed for every row at every step (over ids < vocab_size); distinct masks are stored once."""

    def __init__(self, table: list, index: dict, vocab_size: int):
        self.table, self.index, self.vocab_size = table, index, vocab_size
        self.steps: list[list[int]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = torch.isfinite(scores[:, : self.vocab_size]).cpu().numpy()
        full = allowed.all(axis=1)
        ids = []
        for r in range(allowed.shape[0]):
            if full[r]:
                ids.append(-1)
                continue
            packed = np.packbits(allowed[r])
            key = packed.tobytes()
            k = self.index.get(key)
            if k is None:
                k = self.index[key] = len(self.table)
                self.table.append(packed)
            ids.append(k)
        self.steps.append(ids)
        return scores


class _LogprobRecorder:
    """Last logits processor: keeps the sampling distribution of the previous step and, when the next
    step shows which token was drawn, records that token's log-probability (one step of memory)."""

    def __init__(self, prompt_width: int):
        self.width = prompt_width
        self.prev: Optional[torch.Tensor] = None
        self.steps: list[list[float]] = []

    def _collect(self, tokens: torch.Tensor) -> None:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, tokens[:, None]).squeeze(-1).tolist())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.width:
            self._collect(input_ids[:, -1])
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> None:
        if sequences.shape[1] > self.width + len(self.steps):
            self._collect(sequences[:, -1])
        self.prev = None


class _StopOnTokens:
    """Stopping criterion: a row is done once its last token is one of `ids`."""

    def __init__(self, ids: Sequence[int], device):
        ids = [int(t) for t in ids]
        self.lookup = torch.zeros(max(ids) + 2, dtype=torch.bool, device=device)
        self.lookup[torch.tensor(ids, dtype=torch.long, device=device)] = True

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return self.lookup[input_ids[:, -1].clamp(max=len(self.lookup) - 1)]


@contextmanager
def _own_generation_config(model, gen_cfg):
    """Make `gen_cfg` the model's own generation config for the duration of a generate() call, so no version
    of transformers can fill "default-looking" values of it from the checkpoint's generation_config.json."""
    target = getattr(model, "module", model)  # DDP-style wrappers; FSDP2 modules are the model itself
    saved = getattr(target, "generation_config", None)
    target.generation_config = gen_cfg
    try:
        yield
    finally:
        target.generation_config = saved


def _cut(tokens: list[int], ends: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(tokens):
        if t in ends:
            return tokens[: i + 1], True
    return tokens, False


def sample(
    model,
    prompts: Sequence[Sequence[int]],
    spec: SamplingSpec,
    *,
    pad_token_id: int,
    vocab_size: int,
    device: torch.device,
    seed: Optional[int] = None,
) -> Rollout:
    """Sample one completion per prompt row (repeat prompts for several samples per prompt)."""
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList, TemperatureLogitsWarper

    if seed is not None:
        torch.manual_seed(seed)
    table: list[np.ndarray] = []
    index: dict = {}
    if spec.vocab_limit is not None:
        vocab_size = min(vocab_size, spec.vocab_limit)
    ends = set(int(t) for t in spec.eos_token_ids) | set(int(t) for t in spec.stop_token_ids)
    out = Rollout(
        prompts=[list(map(int, p)) for p in prompts],
        responses=[],
        finished=[],
        mask_ids=[] if spec.record_masks else None,
        mask_table=table,
        vocab_size=vocab_size,
        sample_logprobs=[] if spec.record_logprobs else None,
    )
    gen_cfg = GenerationConfig(
        do_sample=True,
        num_beams=1,
        max_new_tokens=spec.max_new_tokens,
        min_new_tokens=0,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        pad_token_id=pad_token_id,
        eos_token_id=[int(t) for t in spec.eos_token_ids] or None,
        use_cache=True,
    )
    for s in range(0, len(out.prompts), spec.batch_size):
        batch = out.prompts[s : s + spec.batch_size]
        input_ids, attn = left_pad(batch, pad_token_id, device)
        width = input_ids.shape[1]
        procs = LogitsProcessorList([_VocabLimit(spec.vocab_limit)] if spec.vocab_limit is not None else [])
        if spec.processors:
            procs.extend(spec.processors(width, len(batch)))
        recorder = None
        if spec.record_masks:
            recorder = _MaskRecorder(table, index, vocab_size)
            procs.append(recorder)
        if spec.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(spec.temperature))
        lp_recorder = None
        if spec.record_logprobs:
            lp_recorder = _LogprobRecorder(width)
            procs.append(lp_recorder)
        stops = StoppingCriteriaList()
        if spec.stop_token_ids:
            stops.append(_StopOnTokens(spec.stop_token_ids, device))
        with torch.no_grad(), _own_generation_config(model, gen_cfg):
            seqs = model.generate(
                input_ids=input_ids,
                attention_mask=attn,
                generation_config=gen_cfg,
                logits_processor=procs,
                stopping_criteria=stops,
            )
        if lp_recorder is not None:
            lp_recorder.finish(seqs)
        new = seqs[:, width:].tolist()
        for r, toks in enumerate(new):
            resp, done = _cut(toks, ends)
            out.responses.append(resp)
            out.finished.append(done)
            if recorder is not None:
                out.mask_ids.append([recorder.steps[t][r] for t in range(len(resp))])
            if lp_recorder is not None:
                out.sample_logprobs.append([lp_recorder.steps[t][r] for t in range(len(resp))])
    return out
