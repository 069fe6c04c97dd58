"""Per-token log-probabilities from logits, optionally under the same constraint masks and temperature
that produced a sample, so PPO ratios and KL terms compare the distribution that was actually sampled.

Convention: every per-token tensor is aligned with `input_ids` ([B, T]); entry t belongs to token t
(predicted from the logits at t − 1); entry 0 is always 0. A constraint is (`mask_ids` [B, T] long,
`masks` [U, V] bool): token t was sampled from the tokens where `masks[mask_ids[b, t]]` is True, or
from the whole vocabulary when `mask_ids[b, t] < 0`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

_CHUNK_BYTES = 1 << 28  # fp32 logits converted at a time (256 MB)


def _chunk_rows(vocab: int) -> int:
    return max(1, _CHUNK_BYTES // (4 * max(vocab, 1)))


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] for logits [..., V] and targets [...], computed in fp32 chunk by chunk
    (never materialising a full fp32 copy of bf16 logits)."""
    flat = logits.reshape(-1, logits.shape[-1])
    tgt = targets.reshape(-1)
    out = torch.empty(tgt.shape, dtype=torch.float32, device=logits.device)
    step = _chunk_rows(flat.shape[-1])
    for s in range(0, flat.shape[0], step):
        rows = flat[s : s + step].float()
        out[s : s + step] = rows.gather(-1, tgt[s : s + step, None]).squeeze(-1) - torch.logsumexp(rows, -1)
    return out.view(targets.shape)


def token_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask_ids: Optional[torch.Tensor] = None,
    masks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[B, T] log-probs of each token given its prefix (entry 0 = 0); see the module docstring."""
    logits = logits[:, :-1]
    targets = input_ids[:, 1:]
    if temperature != 1.0:
        logits = logits / temperature
    out = gather_logprobs(logits, targets)
    if mask_ids is not None and masks is not None and masks.numel():
        ids = mask_ids[:, 1:]
        rows, cols = torch.nonzero(ids >= 0, as_tuple=True)
        if rows.numel():
            parts, step = [], _chunk_rows(logits.shape[-1])
            for s in range(0, rows.numel(), step):  # [chunk, V] fp32 at a time
                r, c = rows[s : s + step], cols[s : s + step]
                lg = logits[r, c].float().masked_fill(~masks[ids[r, c]], float("-inf"))
                parts.append(lg.gather(-1, targets[r, c][:, None]).squeeze(-1) - torch.logsumexp(lg, -1))
            out = out.index_put((rows, cols), torch.cat(parts))
    return F.pad(out, (1, 0))
