"""Stage-1 freezing: only the itemic-token rows of the input embedding (and, when asked, of the
output layer) train; everything else is frozen.

Rows cannot be frozen with `requires_grad`, so the gradients of the other rows are zeroed after the
backward pass (after the data-parallel and embedding all-reduces) and before the optimizer step.
With a zero gradient from step one, AdamW's moments stay zero and the update of those rows is exactly
zero; together with no weight decay on these parameters, frozen rows stay bit-identical. Works on
vocab-parallel shards: each TP rank masks the rows of its own slice of the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megarec.common.errors import ConfigError


@dataclass
class RowMask:
    name: str
    param: torch.nn.Parameter
    trainable: torch.Tensor  # bool [local_rows]


def _local_row_mask(param: torch.Tensor, tp_rank: int, first_id: int, last_id: int) -> torch.Tensor:
    local_rows = param.shape[0]
    start = tp_rank * local_rows
    ids = torch.arange(start, start + local_rows)
    return (ids >= first_id) & (ids <= last_id)


def apply_itemic_freeze(
    chunks: list, first_id: int, last_id: int, train_output_rows: bool, tied: bool, tp_rank: int, padded_vocab: int
) -> list[RowMask]:
    """Freeze every parameter of `chunks` (unwrapped GPTModels) except the embedding-like weights;
    returns the row masks to apply to their gradients each step."""
    if not 0 <= first_id <= last_id < padded_vocab:
        raise ConfigError(
            f"itemic id range [{first_id}, {last_id}] is outside the vocabulary (padded size {padded_vocab})"
        )
    masks: list[RowMask] = []
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            is_input = name.endswith("embedding.word_embeddings.weight")
            is_output = name.endswith("output_layer.weight")
            # With tied weights and PP > 1 the last stage holds a synchronised copy of the embedding.
            keep = is_input or (is_output and (tied or train_output_rows))
            param.requires_grad_(keep)
            if keep:
                masks.append(RowMask(name, param, _local_row_mask(param, tp_rank, first_id, last_id)))
    return masks


def mask_frozen_row_grads(masks: list[RowMask]) -> None:
    """Zero the gradient of every frozen row (Megatron DDP keeps grads in `main_grad`)."""
    for m in masks:
        grad = getattr(m.param, "main_grad", None)
        if grad is None:
            grad = m.param.grad
        if grad is not None:
            grad[~m.trainable.to(grad.device)] = 0


def row_frozen_param_names(masks: list[RowMask]) -> set[str]:
    return {m.name for m in masks}
