"""The subprocess behind `megarec doctor gpu`'s THD check: per-token losses of packed documents in
Transformer Engine's THD layout against each document run alone.

It uses the product code end to end: `megarec.data.megatron_datasets.packed_sample` builds the packs (without
an S×S mask, as the engine does under TE), `megarec.pretrain.batch.make_batch_preparer(..., thd=True)` turns
them into the one-stream THD batch with `PackedSeqParams` (`to_thd`), and the model is
`megarec.models.qwen3.builder.build_model_chunks(..., impl="transformer_engine")` after `init_megatron`. A control
runs the same packs as plain causal sequences (documents attending to each other): it must differ by far more
than the tolerance, or the probe could not tell the two apart. Prints one JSON line.

    python -m megarec.doctor.thd_probe [--seq-length 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import json

# Two packs of documents (lengths chosen uneven, as real data is), padded to the sequence length.
PACK_LENGTHS = ((203, 117, 150), (150, 211, 96))
PRESET, NUM_LAYERS, VOCAB = "qwen3-0.6b", 2, 4096


def run(seq_length: int, seed: int) -> dict:
    import torch

    from megarec.data.megatron_datasets import packed_sample
    from megarec.models.config import ModelConfig
    from megarec.models.qwen3 import builder as qwen3
    from megarec.pretrain.batch import make_batch_preparer
    from megarec.runtime.config import ParallelConfig
    from megarec.runtime.megatron_parallel import init_megatron, shutdown_megatron

    model_cfg = ModelConfig(
        preset=PRESET, num_layers=NUM_LAYERS, vocab_size=VOCAB, dtype="bf16", transformer_impl="transformer_engine"
    )
    parallel = ParallelConfig()
    arch, impl = qwen3.setup(model_cfg, parallel, 1)
    init_megatron(parallel, seed)
    try:
        device = torch.device("cuda", torch.cuda.current_device())
        tconfig = qwen3.build_transformer_config(arch, model_cfg, parallel, impl)
        padded = qwen3.padded_vocab_size(arch.vocab_size, model_cfg.make_vocab_size_divisible_by, 1)
        model = qwen3.build_model_chunks(arch, tconfig, impl, padded, seq_length)[0].cuda(device).eval()

        g = torch.Generator().manual_seed(seed + 1)
        docs = [[torch.randint(0, arch.vocab_size, (n,), generator=g).numpy() for n in lens] for lens in PACK_LENGTHS]
        packs = [packed_sample(d, None, seq_length, attention_mask=False) for d in docs]
        batch = {k: torch.stack([p[k] for p in packs]) for k in packs[0]}
        thd = make_batch_preparer(device, explicit_causal_mask=False, thd=True)(dict(batch))
        plain = make_batch_preparer(device, explicit_causal_mask=False, thd=False)(
            dict(batch, position_ids=torch.arange(seq_length).expand(len(packs), seq_length).contiguous())
        )
        with torch.no_grad():
            packed = (
                model(
                    thd["tokens"],
                    thd["position_ids"],
                    thd["attention_mask"],
                    labels=thd["labels"],
                    packed_seq_params=thd["packed_seq_params"],
                )
                .float()
                .reshape(len(packs), seq_length)
            )
            control = model(
                plain["tokens"], plain["position_ids"], plain["attention_mask"], labels=plain["labels"]
            ).float()
            diffs, control_diffs = [], []
            for row, row_docs in enumerate(docs):
                offset = 0
                for j, doc in enumerate(row_docs):
                    n = len(doc)
                    tokens = torch.from_numpy(doc).to(device)[None]
                    labels = torch.cat([tokens[:, 1:], tokens.new_zeros(1, 1)], dim=1)
                    alone = model(tokens, torch.arange(n, device=device)[None], None, labels=labels).float()[0, : n - 1]
                    diffs.append((packed[row, offset : offset + n - 1] - alone).abs())
                    if j:  # the first document of a pack sees the same context either way
                        control_diffs.append((control[row, offset : offset + n - 1] - alone).abs())
                    offset += n
        d, c = torch.cat(diffs), torch.cat(control_diffs)
        in_document = batch["loss_mask"].bool().to(device)
        return {
            "max_abs_diff": d.max().item(),
            "mean_abs_diff": d.mean().item(),
            "control_mean_abs_diff": c.mean().item(),
            "tokens_compared": int(d.numel()),
            "loss_mask_tokens": int(in_document.sum()),
            "documents": sum(len(p) for p in PACK_LENGTHS),
            "packs": len(packs),
            "seq_length": seq_length,
            "mean_loss": packed[in_document].mean().item(),
            "cu_seqlens": thd["packed_seq_params"].cu_seqlens_q.tolist(),
        }
    finally:
        shutdown_megatron()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m megarec.doctor.thd_probe", description=__doc__.splitlines()[0])
    p.add_argument("--seq-length", type=int, default=512, help="Tokens per pack (default %(default)s).")
    p.add_argument("--seed", type=int, default=0, help="Seed of weights and documents (default %(default)s).")
    args = p.parse_args(argv)
    print(json.dumps(run(args.seq_length, args.seed)), flush=True)


if __name__ == "__main__":
    main()
