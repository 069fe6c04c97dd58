"""`ItemConstraintLogitsProcessor`: a `transformers.LogitsProcessor` that keeps every generated item real.

Per row of the batch (rows = prompts × beams or × samples, prompt-major as `generate` lays them out):
  * inside an item (after `<|sid_begin|>`, fewer than L codes so far) only the trie children of the codes
    so far are allowed; after L codes only `<|sid_end|>`;
  * outside an item, code tokens and `<|sid_end|>` are masked (they are meaningless there); with
    `force_item=True` the first generated token must be `<|sid_begin|>` and, once one item is complete,
    only the end-of-sequence ids are allowed (`after_item="stop"`), or text is free again (`"free"`).
Masked entries become -inf, so beam scores stay the model's own log-probabilities of the item tokens.
The state of a row is read from its last L+1 tokens, so the processor needs no per-step bookkeeping
and works unchanged for greedy, beam search and sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from megarec.common.errors import ConfigError
from megarec.decoding.trie import ItemTrie


class ItemConstraintLogitsProcessor(LogitsProcessor):
    """Mask every token that does not continue a valid item (see module docstring)."""

    def __init__(
        self,
        tries: ItemTrie | Sequence[ItemTrie],
        *,
        prompt_length: int | None = None,
        force_item: bool = False,
        after_item: str = "stop",
        eos_token_ids: Sequence[int] = (),
    ):
        self.tries = [tries] if isinstance(tries, ItemTrie) else list(tries)
        if not self.tries:
            raise ConfigError("ItemConstraintLogitsProcessor needs at least one trie")
        self.layout = self.tries[0].layout
        if any(t.layout != self.layout for t in self.tries):
            raise ConfigError("all tries must share one item token layout")
        if after_item not in ("stop", "free"):
            raise ConfigError(f"after_item must be 'stop' or 'free', got {after_item!r}")
        if force_item and prompt_length is None:
            raise ConfigError("force_item=True needs prompt_length (the padded prompt length)")
        if force_item and after_item == "stop" and not eos_token_ids:
            raise ConfigError("after_item='stop' needs eos_token_ids")
        self.prompt_length = prompt_length
        self.force_item = force_item
        self.after_item = after_item
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self._inner = torch.tensor(
            sorted({t for layer in self.layout.code_token_ids for t in layer} | {self.layout.sid_end_id}),
            dtype=torch.long,
        )

    def _state(self, tail: list[int]) -> tuple[str, list[int]]:
        """("inside", codes-so-far token ids) or ("outside", []) from the last L+1 tokens of a row."""
        begin, end = self.layout.sid_begin_id, self.layout.sid_end_id
        for j in range(len(tail) - 1, -1, -1):
            if tail[j] == end:
                return "outside", []
            if tail[j] == begin:
                return "inside", tail[j + 1 :]
        return "outside", []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, length = input_ids.shape
        if rows % len(self.tries):
            raise ConfigError(f"{rows} rows cannot be split evenly over {len(self.tries)} prompts' tries")
        per_prompt = rows // len(self.tries)
        L = self.layout.num_layers
        tails = input_ids[:, -(L + 1) :].tolist()
        allowed = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        generated = None if self.prompt_length is None else length - self.prompt_length
        gen_tokens = input_ids[:, self.prompt_length :].tolist() if self.force_item and generated else None
        for r, tail in enumerate(tails):
            state, prefix = self._state(tail)
            if state == "inside":
                if len(prefix) >= L:
                    allowed[r, self.layout.sid_end_id] = True
                else:
                    nxt = self.tries[r // per_prompt].allowed(prefix)
                    if len(nxt):
                        allowed[r, torch.from_numpy(nxt).to(scores.device)] = True
                    else:  # an invalid prefix forced by the prompt: close the item at once
                        allowed[r, self.layout.sid_end_id] = True
            elif self.force_item and generated == 0:
                allowed[r, self.layout.sid_begin_id] = True
            elif self.force_item and self.after_item == "stop" and self.layout.sid_end_id in (gen_tokens or [[]])[r]:
                allowed[r, self.eos_token_ids] = True
            else:
                allowed[r] = True
                allowed[r, self._inner.to(scores.device)] = False
        return scores.masked_fill(~allowed, float("-inf"))
