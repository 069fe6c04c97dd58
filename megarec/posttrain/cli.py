"""`megarec sft | distill | grpo`: the post-training stages on HF checkpoints (also under torchrun/srun,
where the policy is sharded with FSDP2). Every verb resumes from its newest checkpoint and ends by
writing an HF checkpoint that the next stage (model.path) and evaluation load."""

from __future__ import annotations

VERBS = {
    "sft": (
        "SFTConfig",
        "megarec.posttrain.algorithms.sft",
        "SFTTrainer",
        "Supervised fine-tuning on chat data (assistant tokens only; general + recommendation mixture).",
        "configs/posttrain/sft.yaml",
    ),
    "distill": (
        "DistillConfig",
        "megarec.posttrain.algorithms.distill",
        "OnPolicyDistillationTrainer",
        "On-policy distillation from the original base model on general-domain prompts.",
        "configs/posttrain/distill.yaml",
    ),
    "grpo": (
        "GRPOConfig",
        "megarec.posttrain.algorithms.grpo",
        "GRPOTrainer",
        "Rec-RL with GRPO: trie-constrained policy samples, hit reward, KL to the reference.",
        "configs/posttrain/grpo.yaml",
    ),
}


def register(sub) -> None:
    from megarec.common import config as config_mod
    from megarec.posttrain import config as pt_config

    for verb, (cfg_name, _, _, help_text, recipe) in VERBS.items():
        cfg_cls = getattr(pt_config, cfg_name)
        p = sub.add_parser(
            verb,
            help=help_text,
            description=f"{help_text} Values come from --config (e.g. {recipe}), then KEY=VALUE overrides in "
            f"dotted form. Multi-process: torchrun --nproc_per_node N -m megarec {verb} ...",
            epilog="config keys:" + config_mod.describe(cfg_cls),
        )
        p.add_argument("--config", help="YAML recipe (may name a `base:` recipe it extends).")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Dotted config overrides (see keys below).")
        p.set_defaults(func=run)


def run(args) -> int:
    import importlib

    from megarec.common.config import load_config
    from megarec.posttrain import config as pt_config
    from megarec.runtime import distributed
    from megarec.runtime.distributed import world_size_from_env

    cfg_name, module, trainer_name, _, _ = VERBS[args.verb]
    cfg = load_config(getattr(pt_config, cfg_name), args.config, args.overrides)
    pt_config.check_export_dir(cfg)  # before torch is imported and any model is loaded
    mod = importlib.import_module(module)
    mod.validate_config(cfg, world_size_from_env())  # fail before any process group or model load
    env = distributed.init_process_group()
    try:
        getattr(mod, trainer_name)(cfg, env).fit()
    except BaseException:
        distributed.shutdown()
        raise
    distributed.shutdown(sync=True)
    return 0
