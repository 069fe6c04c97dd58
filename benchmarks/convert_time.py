"""Wall-clock time of HF → Megatron-Core → HF for a randomly initialised Qwen3-0.6B-shaped model.

Builds the model offline from the public 0.6B shape (28 layers, hidden 1024, 16 heads / 8 KV heads,
head dim 128, SwiGLU 3072, vocab 151,936, tied), saves it as HF safetensors, then times the two CLI
conversions (`megarec convert hf-to-mcore`, `megarec convert mcore-to-hf`, each a fresh process, so
the numbers include interpreter and import start-up) and checks the round trip is bit-exact.

    .venv/bin/python benchmarks/convert_time.py [--dtype bf16] [--tp 1] [--workdir DIR] [--verify]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch


def build_hf(out: str, dtype: torch.dtype) -> float:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megarec.models.qwen3.presets import get_preset

    a = get_preset("qwen3-0.6b")
    start = time.time()
    torch.manual_seed(0)
    cfg = Qwen3Config(
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
        max_position_embeddings=a.max_position_embeddings,
    )
    model = Qwen3ForCausalLM(cfg).to(dtype)
    model.save_pretrained(out)
    return time.time() - start


def timed(cmd: list[str]) -> float:
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="HF weight dtype (Qwen3 ships bf16).")
    ap.add_argument("--tp", type=int, default=1, help="Target TP of the Megatron checkpoint (vocab padding).")
    ap.add_argument("--workdir", default=None, help="Scratch directory (default: a temp dir, removed after).")
    ap.add_argument("--verify", action="store_true", help="Also time `megarec convert verify` (fp32 logits).")
    args = ap.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="megarec_convert_bench_")
    hf, mc, back = (os.path.join(work, d) for d in ("hf", "mcore", "hf_back"))
    for d in (hf, mc, back):
        shutil.rmtree(d, ignore_errors=True)
    try:
        build_s = build_hf(hf, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
        cli = [sys.executable, "-m", "megarec", "convert"]
        to_mcore = timed([*cli, "hf-to-mcore", "--hf-dir", hf, "--out", mc, "--tp", str(args.tp)])
        to_hf = timed([*cli, "mcore-to-hf", "--mcore-dir", mc, "--out", back])
        from megarec.common.hfdir import HFWeights

        a, b = HFWeights(hf), HFWeights(back)
        exact = sorted(a.names()) == sorted(b.names()) and all(torch.equal(a.get(n), b.get(n)) for n in a.names())
        result = {
            "model": "qwen3-0.6b shape (random)",
            "dtype": args.dtype,
            "tp": args.tp,
            "build_and_save_hf_s": round(build_s, 1),
            "hf_to_mcore_s": round(to_mcore, 1),
            "mcore_to_hf_s": round(to_hf, 1),
            "round_trip_s": round(to_mcore + to_hf, 1),
            "bit_exact": exact,
            "threads": torch.get_num_threads(),
        }
        if args.verify:
            result["verify_s"] = round(timed([*cli, "verify", "--hf-dir", hf, "--mcore-dir", mc]), 1)
        print(json.dumps(result))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
