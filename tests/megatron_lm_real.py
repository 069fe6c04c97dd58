"""Megatron-LM's own code (a checkout of core_v0.16.1 on PYTHONPATH) on a megarec checkpoint, on CPU.

Used by test_megatron_lm_interop.py only when MEGATRON_LM_DIR is set. Megatron-LM imports two things this
CPU environment lacks at start-up: `six` (its BERT tokenizer) and a Triton-only kernel module; both get an
empty stand-in when missing. Its GPU-only `get_model` (CUDA streams) is replaced by the same steps done here:
`gpt_builders.gpt_builder`, Float16Module under --bf16, Megatron DDP. Then its own optimizer set-up and its
own `load_checkpoint` run unchanged.

  python tests/megatron_lm_real.py parse <out.json> <flags…>   parse_args + validate_args → the args as JSON
  python tests/megatron_lm_real.py load <out.pt> <flags…>      + load_checkpoint → loaded tensors and state
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types

STAND_INS = set()
if importlib.util.find_spec("six") is None:
    STAND_INS.add("six")
if importlib.util.find_spec("triton") is None:
    STAND_INS.add("megatron.core.transformer.custom_layers.batch_invariant_kernels")


class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An empty module whose attributes are inert placeholders."""

    def find_spec(self, name, path, target=None):
        if name in STAND_INS or name.split(".")[0] in STAND_INS:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attribute(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {}) if name[:1].isupper() else (lambda *a, **k: None)

        module.__getattr__ = attribute
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StandIn())


def parse(flags: list[str]):
    from megatron.training.arguments import parse_args, validate_args

    sys.argv = ["pretrain_gpt.py", *flags]
    args = parse_args()
    validate_args(args, {})
    return args


def cmd_parse(out: str, flags: list[str]) -> None:
    args = parse(flags)
    json.dump(
        {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}, open(out, "w")
    )


def cmd_load(out: str, flags: list[str]) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import get_megatron_optimizer
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.module import Float16Module

    from megarec.runtime import cpu_shims

    args = parse(flags)
    from megatron.training.checkpointing import load_checkpoint
    from megatron.training.global_vars import set_global_variables
    from megatron.training.training import get_megatron_optimizer_config, get_optimizer_param_scheduler

    set_global_variables(args, build_tokenizer=False)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    cpu_shims.enable()
    ps.initialize_model_parallel(args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    model_parallel_cuda_manual_seed(args.seed)
    from gpt_builders import gpt_builder

    model = gpt_builder(args, True, True)
    module = Float16Module(model.config, model) if args.bf16 else model
    ddp = DistributedDataParallel(
        config=model.config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=args.use_distributed_optimizer
        ),
        module=module,
    )
    opt = sched = None
    if not args.finetune and not args.no_load_optim:
        config, overrides = get_megatron_optimizer_config(args)
        opt = get_megatron_optimizer(config, [ddp], config_overrides=overrides)
        sched = get_optimizer_param_scheduler(opt)
    iteration, _ = load_checkpoint([ddp], opt, sched)
    dump = {
        "iteration": iteration,
        "consumed_train_samples": args.consumed_train_samples,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
    }
    if opt is not None:
        inner = opt.chained_optimizers[0] if hasattr(opt, "chained_optimizers") else opt
        names = {id(p): n for n, p in model.named_parameters()}
        groups = inner.optimizer.param_groups
        dump["moments"] = {
            names[id(p)]: {k: v.clone() for k, v in inner.optimizer.state[p].items()}
            for g in groups
            for p in g["params"]
        }
        dump["lr"] = sorted({g["lr"] for g in groups})
        dump["scheduler"] = sched.state_dict()
    torch.save(dump, out)


if __name__ == "__main__":
    {"parse": cmd_parse, "load": cmd_load}[sys.argv[1]](sys.argv[2], sys.argv[3:])
