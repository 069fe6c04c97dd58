"""Optimizer parameter groups (no weight decay on norms, biases, embeddings) and the LR schedule."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_weight_decay_groups_and_row_frozen_params():
    code = textwrap.dedent("""
        import torch
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megarec.models.qwen3 import builder as qwen3
        from megarec.models.config import ModelConfig, ParallelConfig
        from megarec.pretrain.config import OptimizerConfig, TrainConfig
        from megarec.runtime.distributed import init_distributed
        from megarec.pretrain.optimizer import build_optimizer, build_scheduler
        init_distributed(ParallelConfig(), seed=0)
        arch = qwen3.resolve_arch(ModelConfig())
        tcfg = qwen3.build_transformer_config(arch, ModelConfig(), ParallelConfig(), "local")
        for row_frozen in (set(), {"output_layer.weight"}):
            chunk = qwen3.build_model_chunks(arch, tcfg, "local", 1024, 32)[0]
            names = {id(p): n for n, p in chunk.named_parameters()}
            model = [DistributedDataParallel(config=tcfg, ddp_config=DistributedDataParallelConfig(), module=chunk)]
            opt = build_optimizer(model, OptimizerConfig(), torch.float32, False, row_frozen)
            build_scheduler(opt, OptimizerConfig(), TrainConfig(train_iters=10))
            decayed, plain = set(), set()
            for group in opt.param_groups:
                for p in group["params"]:
                    (decayed if group["weight_decay"] > 0 else plain).add(names[id(p)])
            print(sorted(decayed), sorted(plain), sep="|")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (full_decay, full_plain), (frozen_decay, frozen_plain) = [line.split("|") for line in proc.stdout.splitlines()]
    full_decay, full_plain = eval(full_decay), eval(full_plain)
    assert "output_layer.weight" in full_decay
    assert all(n.endswith(("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight",
                           "output_layer.weight")) for n in full_decay)
    assert "embedding.word_embeddings.weight" in full_plain and "decoder.final_layernorm.weight" in full_plain
    assert any("q_layernorm" in n for n in full_plain) and any("input_layernorm" in n for n in full_plain)
    assert any("pre_mlp_layernorm" in n for n in full_plain)
    assert "output_layer.weight" in eval(frozen_plain) and "output_layer.weight" not in eval(frozen_decay)
