"""Run under torchrun with 2 CPU processes: context parallel = 2 on gloo. Slices a known batch with the
pre-training batch preparer and reduces a loss over the CP group; writes <out_dir>/rank<R>.json."""

import json
import os
import sys

import torch
import torch.distributed as dist

from megarec.pretrain.batch import make_batch_preparer
from megarec.pretrain.trainer import _reduce_loss
from megarec.runtime.config import ParallelConfig
from megarec.runtime.megatron_parallel import init_megatron

init_megatron(ParallelConfig(context_parallel_size=2), seed=1)
b, s = 2, 8
tokens = torch.arange(b * s).view(b, s)
mask = torch.ones(b, 1, s, s, dtype=torch.bool).triu(1)
mask[1, 0, 3:, :3] = True  # two documents in sample 1
batch = {
    "tokens": tokens,
    "labels": tokens + 100,
    "loss_mask": torch.tensor([[1, 0, 1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1, 1]], dtype=torch.float),
    "position_ids": torch.tensor([list(range(8)), [0, 1, 2, 0, 1, 2, 3, 4]]),
    "attention_mask": mask,
}
out = make_batch_preparer(torch.device("cpu"), explicit_causal_mask=False)(batch)
# Per-token "loss" = the global position of the token, so the reduced value checks which tokens were summed.
token_loss = out["tokens"].float() % s
loss_sum = (token_loss * out["loss_mask"]).sum()
count = out["loss_mask"].sum()
loss, n = _reduce_loss([{"lm loss": torch.stack([loss_sum, count])}], torch.device("cpu"))
with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump(
        {
            "rank": dist.get_rank(),
            "tokens": out["tokens"].tolist(),
            "labels": out["labels"].tolist(),
            "loss_mask": out["loss_mask"].tolist(),
            "position_ids": out["position_ids"].tolist(),
            "attention_mask": out["attention_mask"].int().tolist(),
            "loss": loss,
            "count": n,
        },
        f,
    )
dist.barrier()
