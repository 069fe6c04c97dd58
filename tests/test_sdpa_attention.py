"""SDPA core attention equals Megatron-Core's unfused DotProductAttention (causal and per-document
masks, grouped-query attention) inside a real GPTModel."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_sdpa_matches_megatron_unfused_attention():
    code = textwrap.dedent("""
        import torch
        from megarec.models.config import ModelConfig
        from megarec.runtime.config import ParallelConfig
        from megarec.models.qwen3 import builder as qwen3
        from megarec.runtime.megatron_parallel import init_megatron
        init_megatron(ParallelConfig(), seed=0)
        arch = qwen3.resolve_arch(ModelConfig(preset="qwen3-tiny"))     # 4 heads, 2 KV groups
        tcfg = qwen3.build_transformer_config(arch, ModelConfig(), ParallelConfig(), "local")
        torch.manual_seed(0)
        sdpa = qwen3.build_model_chunks(arch, tcfg, "local", 1024, 32, "sdpa")[0].eval()
        unfused = qwen3.build_model_chunks(arch, tcfg, "local", 1024, 32, "unfused")[0].eval()
        unfused.load_state_dict(sdpa.state_dict())
        tokens = torch.randint(0, 1024, (2, 32))
        pos = torch.arange(32).expand(2, 32)
        causal = torch.triu(torch.ones(1, 1, 32, 32, dtype=torch.bool), 1)
        with torch.no_grad():
            d1 = (sdpa(tokens, pos, None) - unfused(tokens, pos, causal)).abs().max().item()
            docs = causal.repeat(2, 1, 1, 1).clone()
            docs[0, 0, 12:, :12] = True                              # two documents in sample 0
            d2 = (sdpa(tokens, pos, docs) - unfused(tokens, pos, docs)).abs().max().item()
            # the per-document mask really changes the output of the second document
            d3 = (sdpa(tokens, pos, docs)[0, 12:] - sdpa(tokens, pos, None)[0, 12:]).abs().max().item()
        print(d1, d2, d3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d_causal, d_docs, effect = map(float, proc.stdout.split())
    assert d_causal < 1e-5 and d_docs < 1e-5  # fp32, different summation order only
    assert effect > 1e-3


def test_model_dropout_settings_reach_the_built_gpt_model():
    """model.hidden_dropout / model.attention_dropout regularise training only: two training-mode forwards
    differ, evaluation mode is deterministic and equals the model built without dropout."""
    code = textwrap.dedent("""
        import torch
        from megarec.models.config import ModelConfig
        from megarec.runtime.config import ParallelConfig
        from megarec.models.qwen3 import builder as qwen3
        from megarec.runtime.megatron_parallel import init_megatron
        init_megatron(ParallelConfig(), seed=0)
        arch = qwen3.resolve_arch(ModelConfig(preset="qwen3-tiny"))
        def build(**dropout):
            m = ModelConfig(preset="qwen3-tiny", **dropout)
            tcfg = qwen3.build_transformer_config(arch, m, ParallelConfig(), "local")
            torch.manual_seed(0)
            return tcfg, qwen3.build_model_chunks(arch, tcfg, "local", 1024, 32, "sdpa")[0]
        tcfg, drop = build(hidden_dropout=0.3, attention_dropout=0.2)
        _, plain = build()
        plain.load_state_dict(drop.state_dict())
        tokens = torch.randint(0, 1024, (2, 32))
        pos = torch.arange(32).expand(2, 32)
        with torch.no_grad():
            train_gap = (drop.train()(tokens, pos, None) - drop(tokens, pos, None)).abs().max().item()
            eval_gap = (drop.eval()(tokens, pos, None) - plain.eval()(tokens, pos, None)).abs().max().item()
            plain_gap = (plain.train()(tokens, pos, None) - plain(tokens, pos, None)).abs().max().item()
        print(tcfg.hidden_dropout, tcfg.attention_dropout, train_gap, eval_gap, plain_gap)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hidden, attention, train_gap, eval_gap, plain_gap = map(float, proc.stdout.split())
    assert (hidden, attention) == (0.3, 0.2)
    assert train_gap > 1e-2  # fresh dropout masks on every training forward
    assert eval_gap == 0.0 and plain_gap == 0.0  # same weights, no dropout: bit-identical
