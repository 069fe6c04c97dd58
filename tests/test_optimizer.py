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
        from megarec.models.config import ModelConfig
        from megarec.runtime.config import ParallelConfig
        from megarec.pretrain.config import TrainConfig
        from megarec.runtime.config import OptimizerConfig
        from megarec.runtime.megatron_parallel import init_megatron
        from megarec.pretrain.optimizer import build_optimizer, build_scheduler
        init_megatron(ParallelConfig(), seed=0)
        arch = qwen3.resolve_arch(ModelConfig())
        tcfg = qwen3.build_transformer_config(arch, ModelConfig(), ParallelConfig(), "local")
        for row_frozen in (set(), {"output_layer.weight"}):
            chunk = qwen3.build_model_chunks(arch, tcfg, "local", 1024, 32)[0]
            names = {id(p): n for n, p in chunk.named_parameters()}
            model = [DistributedDataParallel(config=tcfg, ddp_config=DistributedDataParallelConfig(), module=chunk)]
            opt = build_optimizer(model, OptimizerConfig(), torch.float32, False, row_frozen)
            build_scheduler(opt, OptimizerConfig(), TrainConfig(steps=10))
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
    assert all(
        n.endswith(
            ("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight", "output_layer.weight")
        )
        for n in full_decay
    )
    assert "embedding.word_embeddings.weight" in full_plain and "decoder.final_layernorm.weight" in full_plain
    assert any("q_layernorm" in n for n in full_plain) and any("input_layernorm" in n for n in full_plain)
    assert any("pre_mlp_layernorm" in n for n in full_plain)
    assert "output_layer.weight" in eval(frozen_plain) and "output_layer.weight" not in eval(frozen_decay)


def test_pretraining_and_post_training_share_one_schedule():
    """Megatron-Core's scheduler as pre-training sets it up and steps it (before each optimizer step) gives the
    rates of `lr_at`, the schedule post-training's LambdaLR follows: one definition for every stage."""
    code = textwrap.dedent("""
        import torch
        from megarec.pretrain.config import TrainConfig
        from megarec.pretrain.optimizer import build_scheduler
        from megarec.runtime.config import OptimizerConfig
        from megarec.runtime.schedule import lambda_scheduler, lr_at

        class Opt:  # the one attribute Megatron's scheduler uses
            param_groups = [{"lr": 0.0, "weight_decay": 0.1}]

        for style, warm in (("cosine", 0.1), ("linear", 0.25), ("constant", 0.0)):
            cfg = OptimizerConfig(lr=3e-3, min_lr=3e-4, warmup_fraction=warm, lr_decay_style=style)
            sched = build_scheduler(Opt(), cfg, TrainConfig(steps=20))
            param = torch.nn.Parameter(torch.zeros(1))
            torch_opt = torch.optim.SGD([param], lr=cfg.lr)
            post = lambda_scheduler(torch_opt, 20, cfg.lr, cfg.min_lr, cfg.warmup_fraction, style)
            for k in range(1, 21):
                sched.step(1)
                want = lr_at(k, 20, cfg.lr, cfg.min_lr, cfg.warmup_fraction, style)
                assert abs(Opt.param_groups[0]["lr"] - want) < 1e-12, (style, k, Opt.param_groups[0]["lr"], want)
                assert abs(torch_opt.param_groups[0]["lr"] - want) < 1e-12, (style, k)
                torch_opt.step()
                post.step()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
