"""`megarec pretrain`: stage 1 / stage 2 pre-training on Megatron-Core (also under torchrun/srun)."""

from __future__ import annotations


def register(sub) -> None:
    from megarec.common.config import describe
    from megarec.pretrain.config import PretrainConfig

    p = sub.add_parser(
        "pretrain",
        help="Pre-train a Qwen3 model on Megatron-Core (TP/PP/DP; stage 1 or stage 2 recipes).",
        description="Pre-train on Megatron-Core. Values come from --config (a YAML recipe in configs/pretrain/), "
        "then from KEY=VALUE overrides in dotted form, e.g. parallel.tensor_model_parallel_size=2 "
        "train.steps=100 'data.data_path=[0.6, gen_text_document, 0.4, rec_text_document]'. "
        "Run multi-process with: torchrun --nproc_per_node N -m megarec pretrain ...",
        epilog="config keys:" + describe(PretrainConfig),
    )
    p.add_argument("--config", help="YAML recipe (may name a `base:` recipe it extends).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Dotted config overrides (see keys below).")
    p.set_defaults(func=run)


def run(args) -> int:
    from megarec.common.config import load_config
    from megarec.pretrain.config import PretrainConfig
    from megarec.pretrain.trainer import run_pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    run_pretrain(cfg)
    return 0
