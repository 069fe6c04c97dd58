"""Prompt preparation shared by the decoders: tokenise, end every prompt with `<|sid_begin|>`, left-pad."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megarec.common.errors import ConfigError


@dataclass(frozen=True)
class ItemCandidate:
    """One decoded item: its code tuple, the real items with those codes (most popular first) and the
    model's log-probability of the code tokens given the prompt (plus `<|sid_end|>` when scored)."""

    codes: tuple[int, ...]
    items: tuple
    logprob: float

    @property
    def item(self):
        """The most popular item with these codes."""
        return self.items[0] if self.items else None


def prompt_token_ids(prompts: Sequence, tokenizer=None) -> list[list[int]]:
    """Token ids of each prompt: strings are tokenised (no special tokens added), id lists pass through."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ConfigError("text prompts need a tokenizer")
            out.append(list(tokenizer(p, add_special_tokens=False)["input_ids"]))
        else:
            out.append([int(t) for t in p])
        if not out[-1]:
            raise ConfigError("empty prompt")
    return out


def with_item_begin(ids: list[int], sid_begin_id: int) -> list[int]:
    """The prompt, ending with `<|sid_begin|>` (appended unless already last)."""
    return ids if ids and ids[-1] == sid_begin_id else ids + [sid_begin_id]


def pad_token_id_for(model, tokenizer=None) -> int:
    """A pad id for left padding (any id works: padded positions are masked out)."""
    for src in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        pid = getattr(src, "pad_token_id", None) if src is not None else None
        if isinstance(pid, int) and pid >= 0:
            return pid
    return 0


def left_pad(batch: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [B, T] and left-padded."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - len(x) :] = torch.tensor(list(x), dtype=torch.long)
        mask[i, width - len(x) :] = 1
    return ids.to(device), mask.to(device)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")
