"""What a Rec-RL answer may look like while it is sampled, as `transformers` logits processors.

Items are always kept real by `megarec.decoding.processor.ItemConstraintLogitsProcessor` (the prefix trie
over the code tuples of real items). On top of it:
  * without reasoning the prompt ends with the empty think block and the trie processor forces the answer
    to be exactly one item followed by `<|im_end|>`;
  * with reasoning, `ReasoningThenItem` shapes the answer as `<think>` free text `</think>` + "\\n\\n" +
    one item + `<|im_end|>`: free text is sampled from the policy (items written inside it are still
    real, by the trie processor), reasoning longer than `max_think_tokens` is closed, and the item after
    `</think>` is forced to start.
Token ids come from the tokenizer and itemic.json; nothing is hard-coded.
"""

from __future__ import annotations

from typing import Sequence

import torch

from megarec.decoding.processor import ItemConstraintLogitsProcessor
from megarec.decoding.trie import ItemTrie


class ReasoningThenItem:
    """Answer structure for sampled reasoning followed by one sampled item (see module docstring)."""

    def __init__(
        self,
        prompt_length: int,
        *,
        think_id: int,
        think_end_id: int,
        separator_ids: Sequence[int],
        sid_begin_id: int,
        sid_end_id: int,
        eos_ids: Sequence[int],
        max_think_tokens: int,
    ):
        self.prompt_length = prompt_length
        self.think_id, self.think_end_id = think_id, think_end_id
        self.separator = list(separator_ids)
        self.begin, self.end = sid_begin_id, sid_end_id
        self.eos = list(eos_ids)
        self.max_think = max_think_tokens

    def _forced(self, resp: list[int]):
        """Token ids this row must take next; "no_eos" inside the reasoning (anything but the end of the
        answer); None when the trie processor alone decides."""
        if not resp:
            return [self.think_id]
        if self.think_end_id not in resp:
            last_begin = max((i for i, t in enumerate(resp) if t == self.begin), default=-1)
            last_end = max((i for i, t in enumerate(resp) if t == self.end), default=-1)
            inside_item = last_begin > last_end
            if len(resp) - 1 >= self.max_think and not inside_item:
                return [self.think_end_id]
            return "no_eos"
        k = len(resp) - resp.index(self.think_end_id) - 1
        if k < len(self.separator):
            return [self.separator[k]]
        if k == len(self.separator):
            return [self.begin]
        if resp[-1] == self.end:
            return self.eos
        return None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids[:, self.prompt_length :].tolist()
        for r, resp in enumerate(rows):
            forced = self._forced(resp)
            if forced == "no_eos":  # the answer must follow the reasoning
                scores[r, self.eos] = float("-inf")
            elif forced is not None:
                keep = scores[r, forced].clone()
                scores[r] = float("-inf")
                scores[r, forced] = keep
        return scores


def answer_processors(trie: ItemTrie, tokenizer, *, reasoning: bool, max_think_tokens: int, eos_ids: Sequence[int]):
    """Factory (padded prompt width, rows) → processors for `rollout.SamplingSpec.processors`."""
    layout = trie.layout
    if not reasoning:

        def make(width: int, rows: int) -> list:
            return [
                ItemConstraintLogitsProcessor(
                    [trie], prompt_length=width, force_item=True, after_item="stop", eos_token_ids=eos_ids
                )
            ]

        return make
    think_id = tokenizer.convert_tokens_to_ids("<think>")
    think_end_id = tokenizer.convert_tokens_to_ids("</think>")
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]

    def make(width: int, rows: int) -> list:
        return [
            ItemConstraintLogitsProcessor([trie], prompt_length=width, force_item=False, after_item="free"),
            ReasoningThenItem(
                width,
                think_id=think_id,
                think_end_id=think_end_id,
                separator_ids=separator,
                sid_begin_id=layout.sid_begin_id,
                sid_end_id=layout.sid_end_id,
                eos_ids=eos_ids,
                max_think_tokens=max_think_tokens,
            ),
        ]

    return make


def answer_tokens(response: Sequence[int], tokenizer, reasoning: bool) -> list[int]:
    """The part of a response that holds the answer: after `</think>` when reasoning is sampled."""
    if not reasoning:
        return list(response)
    end = tokenizer.convert_tokens_to_ids("</think>")
    resp = list(response)
    return resp[resp.index(end) + 1 :] if end in resp else []
