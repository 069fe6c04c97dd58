"""Training tokens/s: megarec's Megatron-Core path vs a plain HF Qwen3ForCausalLM + AdamW loop.

Same architecture (the qwen3-small preset: 4 layers, hidden 256, 8 heads / 4 KV heads, head dim 32,
SwiGLU 768, vocab 4096), same batch (4 x 256 tokens), fp32, same thread count, same machine.
The megarec side runs the real engine (`megarec pretrain`, mock data) in a subprocess so its CPU
shims cannot touch the HF run; throughput is the median over steps after warm-up.

    .venv/bin/python benchmarks/train_throughput.py [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

BATCH, SEQ = 4, 256


def hf_tokens_per_s(steps: int, warmup: int) -> float:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megarec.models.qwen3.presets import get_preset

    a = get_preset("qwen3-small")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=a.vocab_size,
            hidden_size=a.hidden_size,
            intermediate_size=a.ffn_hidden_size,
            num_hidden_layers=a.num_layers,
            num_attention_heads=a.num_attention_heads,
            num_key_value_heads=a.num_query_groups,
            head_dim=a.head_dim,
            tie_word_embeddings=a.tie_word_embeddings,
            rope_theta=a.rope_theta,
            rms_norm_eps=a.rms_norm_eps,
            attn_implementation="sdpa",
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, a.vocab_size, (BATCH, SEQ + 1))
    times = []
    for step in range(steps):
        t = time.perf_counter()
        out = model(input_ids=tokens[:, :-1], labels=tokens[:, 1:])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - t)
    return BATCH * SEQ / statistics.median(times)


def megarec_tokens_per_s(steps: int, warmup: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [
            sys.executable,
            "-m",
            "megarec",
            "pretrain",
            "--config",
            "configs/pretrain/tiny_cpu.yaml",
            "model.preset=qwen3-small",
            "data.mock=true",
            f"train.steps={steps}",
            f"train.seq_length={SEQ}",
            f"train.micro_batch_size={BATCH}",
            f"train.global_batch_size={BATCH}",
            "train.eval_interval=0",
            "checkpoint.save_interval=0",
            "logging.progress=false",
            "logging.wandb_mode=disabled",
            f"logging.run_dir={run_dir}",
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.run(
            cmd,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rates = [json.loads(line)["tokens_per_s"] for line in f if '"tokens_per_s"' in line]
    return statistics.median(rates[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="Training steps per side.")
    ap.add_argument("--warmup", type=int, default=5, help="Steps excluded from the median.")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="Intra-op threads for both.")
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="Alternating runs per side; the best median counts (guards against other load on a shared machine).",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hf = mr = 0.0
    for _ in range(args.repeats):
        hf = max(hf, hf_tokens_per_s(args.steps, args.warmup))
        mr = max(mr, megarec_tokens_per_s(args.steps, args.warmup, args.threads))
    print(f"batch {BATCH}x{SEQ}, qwen3-small (4 layers, hidden 256), fp32, {args.threads} threads")
    print(f"HF Qwen3ForCausalLM + AdamW : {hf:10.0f} tokens/s")
    print(f"megarec Megatron-Core       : {mr:10.0f} tokens/s")
    print(f"ratio megarec / HF          : {mr / hf:10.2f}x   (target >= 1.0x)")


if __name__ == "__main__":
    main()
