"""Context parallelism on CPU (gloo): the per-rank batch slice, the loss and token-count reduction over
data × context parallel ranks, and CP=2 training that reproduces the CP=1 loss curve, saves and resumes.

Without Transformer Engine the local spec's SDPA attention gathers K/V over the CP group (TE's ring
attention is the GPU path, checked by `megarec doctor gpu`); everything around the attention kernel —
batch split, RoPE slice, gradient and loss reductions, checkpoint keys — is the code the GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from megarec.common.errors import ConfigError

from conftest import REPO, free_port

SCRIPTS = os.path.join(REPO, "tests", "dist_scripts")


def _torchrun(script: str, nproc: int, out_dir) -> list[dict]:
    """Run a script under torchrun; each rank writes <out_dir>/rank<R>.json (stdout lines of two processes
    can interleave)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}",
            os.path.join(SCRIPTS, script),
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
def test_batch_split_and_loss_reduction_over_cp_ranks(tmp_path):
    r0, r1 = _torchrun("cp_batch_split.py", 2, tmp_path)
    # 8 tokens = 4 chunks of 2; rank 0 keeps chunks 0 and 3, rank 1 chunks 1 and 2 (load balance).
    assert r0["tokens"] == [[0, 1, 6, 7], [8, 9, 14, 15]]
    assert r1["tokens"] == [[2, 3, 4, 5], [10, 11, 12, 13]]
    assert r0["labels"] == [[100, 101, 106, 107], [108, 109, 114, 115]]
    assert r0["loss_mask"] == [[1, 0, 0, 1], [0, 0, 1, 1]] and r1["loss_mask"] == [[1, 1, 1, 0], [0, 0, 0, 0]]
    assert r0["position_ids"] == [[0, 1, 6, 7], [0, 1, 3, 4]] and r1["position_ids"] == [[2, 3, 4, 5], [2, 0, 1, 2]]
    # The explicit mask keeps this rank's query rows and every key column.
    full = torch.ones(2, 1, 8, 8, dtype=torch.int).triu(1)
    full[1, 0, 3:, :3] = 1
    assert r0["attention_mask"] == full[:, :, [0, 1, 6, 7]].tolist()
    assert r1["attention_mask"] == full[:, :, [2, 3, 4, 5]].tolist()
    # Whole batch: mask positions 0,2,3,4,7 (sample 0) and 6,7 (sample 1) → sum 29 over 7 tokens, on both ranks.
    for r in (r0, r1):
        assert r["count"] == 7 and r["loss"] == pytest.approx(29 / 7, abs=1e-12)


@pytest.mark.parametrize(
    "cp,tp,sp,seq,ok",
    [
        (2, 1, False, 36, True),
        (2, 1, False, 34, False),
        (4, 1, False, 40, True),
        (2, 2, True, 40, True),
        (2, 2, True, 36, False),
        (1, 4, True, 6, False),
    ],
)
def test_sequence_length_must_split_into_cp_chunks(cp, tp, sp, seq, ok):
    from megarec.pretrain.batch import check_seq_length
    from megarec.runtime.config import ParallelConfig

    parallel = ParallelConfig(tensor_model_parallel_size=tp, context_parallel_size=cp, sequence_parallel=sp)
    if ok:
        check_seq_length(seq, parallel)
    else:
        with pytest.raises(ConfigError, match=f"train.seq_length={seq} must be a multiple of"):
            check_seq_length(seq, parallel)


def test_cp_global_positions_cover_the_sequence_once():
    from megarec.models.sdpa_attention import _gathered_to_global_order, cp_global_positions

    assert cp_global_positions(4, 2, 0).tolist() == [0, 1, 6, 7]
    assert cp_global_positions(4, 2, 1).tolist() == [2, 3, 4, 5]
    gathered = torch.cat([cp_global_positions(6, 3, r) for r in range(3)])
    assert gathered[_gathered_to_global_order(6, 3)].tolist() == list(range(18))
