"""`megarec convert hf-to-mcore`: HF Qwen3 checkpoint → Megatron-Core dist checkpoint.

The output is exactly what the pre-training engine writes and loads (`<out>/iter_0000000/` +
`latest_checkpointed_iteration.txt`, via training.checkpointing.save_checkpoint), so stage 1 can start
from it with `checkpoint.init_from=<out>`. The conversion runs in one process: it builds megarec's
Megatron model at TP=1/PP=1 (parameters left uninitialised), fills it through the mapping table and
saves it. A dist checkpoint stores global tensors, so it loads at the requested TP/PP and at any other
layout; the requested TP only fixes the vocabulary padding (a multiple of make_vocab_size_divisible_by
× TP), and the engine keeps that padding at any TP that divides it.

Everything is checked before anything is written, and the output directory appears in one rename.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Optional

import torch

from megarec.common import hfdir as hf_io
from megarec.common.dtypes import HF_DTYPE_NAMES, dtype_from_name
from megarec.common.errors import ConfigError
from megarec.common.itemic import ITEMIC_JSON
from megarec.common.outdir import check_out_dir, staged_dir
from megarec.models.qwen3 import mapping
from megarec.models.qwen3.hf_config import read_qwen3_config

HF_ASSETS_DIR = "hf_assets"  # non-weight HF files kept beside the checkpoint, for the way back


@contextlib.contextmanager
def megatron_single_process():
    """A one-process gloo group with Megatron's TP=PP=1 groups (and the CPU shims when CUDA is absent)."""
    from megarec.runtime.config import ParallelConfig
    from megarec.runtime.megatron_checkpoint import ensure_single_process_group
    from megarec.runtime.megatron_parallel import init_megatron, shutdown_megatron

    ensure_single_process_group()  # gloo even on a GPU node: the conversion runs on the CPU
    try:
        init_megatron(ParallelConfig(), seed=0)
        yield
    finally:
        shutdown_megatron()


def check_hf_tensors(weights: hf_io.HFWeights, arch, where: str) -> None:
    """Every tensor the config implies is present with the implied shape, and nothing else is."""
    expected = mapping.expected_hf_shapes(arch)
    present = {n for n in weights.names() if not mapping.IGNORED_HF.search(n)}
    missing = [n for n in expected if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{where}: the checkpoint has no tensor {missing[0]}{more}, which config.json implies")
    allowed_extra = {mapping.TIED_HF_OUTPUT} if arch.tie_word_embeddings else set()
    unexpected = sorted(present - set(expected) - allowed_extra)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ConfigError(
            f"{where}: tensor {unexpected[0]}{more} is not part of the Qwen3 layout "
            f"config.json describes (layers={arch.num_layers}, tied={arch.tie_word_embeddings})"
        )
    for name, shape in expected.items():
        got = weights.shape(name)
        if tuple(got) != tuple(shape):
            raise ConfigError(f"{where}: tensor {name} has shape {list(got)}, config.json implies {list(shape)}")
        if weights.dtype(name) not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"{where}: tensor {name} has dtype {weights.dtype(name)}, expected a float dtype")


def checkpoint_dtype(requested: str, weights: hf_io.HFWeights, arch) -> torch.dtype:
    """auto: bf16 when the HF weights are all bf16, else fp32 (fp16 is widened losslessly)."""
    if requested != "auto":
        return dtype_from_name(requested)
    dtypes = {weights.dtype(n) for n in mapping.expected_hf_shapes(arch)}
    return torch.bfloat16 if dtypes == {torch.bfloat16} else torch.float32


def megatron_targets(model) -> dict[str, torch.Tensor]:
    """Mapping-table name → parameter of a TP=1/PP=1 GPTModel, derived from the model's own sharded
    state dict (so the names are the checkpoint keys whatever the layer spec)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    params = model.state_dict(keep_vars=True)
    targets = {}
    for module_key, obj in model.sharded_state_dict().items():
        if not isinstance(obj, (ShardedTensor, ShardedTensorFactory)):
            continue
        layer = int(module_key.split(".")[2]) if obj.key.startswith(mapping.LAYER_PREFIX) else None
        targets[mapping.layer_name(obj.key, layer)] = params[module_key]
    return targets


def _tied_output_check(weights: hf_io.HFWeights, arch, where: str) -> None:
    if arch.tie_word_embeddings and mapping.TIED_HF_OUTPUT in weights.names():
        if not torch.equal(weights.get(mapping.TIED_HF_OUTPUT), weights.get("model.embed_tokens.weight")):
            raise ConfigError(
                f"{where}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"
            )


def hf_to_mcore(
    hf_dir: str,
    out: str,
    tp: int = 1,
    pp: int = 1,
    make_vocab_size_divisible_by: int = 128,
    dtype: str = "auto",
    force: bool = False,
) -> dict:
    """Convert; returns a summary dict. Raises ConfigError (nothing written) on any mismatch."""
    from megarec import __version__
    from megarec.models.config import ModelConfig
    from megarec.models.qwen3 import builder as qwen3
    from megarec.runtime.config import ParallelConfig
    from megarec.runtime.distributed import world_size_from_env
    from megarec.runtime.megatron_checkpoint import save_checkpoint

    start = time.time()
    if world_size_from_env() > 1:
        raise ConfigError(
            "hf-to-mcore runs in a single process (the checkpoint it writes loads at any TP/PP); "
            "run it without torchrun"
        )
    if not os.path.isdir(hf_dir):
        raise ConfigError(f"HF checkpoint directory not found: {hf_dir}")
    if make_vocab_size_divisible_by < 1:
        raise ConfigError("--make-vocab-size-divisible-by must be >= 1")
    arch, hf_cfg = read_qwen3_config(hf_dir)
    qwen3.validate_layout(arch, ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp), "local")
    padded = qwen3.padded_vocab_size(arch.vocab_size, make_vocab_size_divisible_by, tp)
    weights = hf_io.HFWeights(hf_dir)
    check_hf_tensors(weights, arch, hf_dir)
    check_out_dir(out, force=force, inputs=[("--hf-dir", hf_dir)])
    _tied_output_check(weights, arch, hf_dir)
    ckpt_dtype = checkpoint_dtype(dtype, weights, arch)
    itemic = _read_itemic(hf_dir, arch.vocab_size)

    hf_dtypes = sorted(
        {HF_DTYPE_NAMES.get(weights.dtype(n), str(weights.dtype(n))) for n in mapping.expected_hf_shapes(arch)}
    )
    extra = {
        "convert": {
            "direction": "hf-to-mcore",
            "source": os.path.abspath(hf_dir),
            "hf_config": hf_cfg,
            "hf_dtype": hf_dtypes[0] if len(hf_dtypes) == 1 else hf_dtypes,
            "checkpoint_dtype": HF_DTYPE_NAMES[ckpt_dtype],
            "vocab_size": arch.vocab_size,
            "padded_vocab_size": padded,
            "make_vocab_size_divisible_by": make_vocab_size_divisible_by,
            "target_tensor_model_parallel_size": tp,
            "target_pipeline_model_parallel_size": pp,
            "tie_word_embeddings": arch.tie_word_embeddings,
            "itemic": itemic,
            "megarec_version": __version__,
        }
    }
    precision = "bf16" if ckpt_dtype == torch.bfloat16 else "fp32"
    with staged_dir(out, force=force, inputs=[("--hf-dir", hf_dir)]) as stage:
        with megatron_single_process():
            tconfig = qwen3.build_transformer_config(arch, ModelConfig(dtype=precision), ParallelConfig(), "local")
            tconfig.perform_initialization = False  # every parameter is overwritten below
            tconfig.use_cpu_initialization = True
            (model,) = qwen3.build_model_chunks(arch, tconfig, "local", padded, seq_length=1)
            targets = megatron_targets(model)
            with torch.no_grad():
                for name, tensor in mapping.hf_to_mcore(weights.get, arch, padded):
                    param = targets.pop(name, None)
                    if param is None or tuple(param.shape) != tuple(tensor.shape):
                        raise RuntimeError(
                            f"internal: mapping target {name} does not match the Megatron model "
                            f"({None if param is None else list(param.shape)} vs {list(tensor.shape)})"
                        )
                    param.copy_(tensor)
            if targets:
                raise RuntimeError(f"internal: Megatron parameters without a mapping rule: {sorted(targets)[:3]}")
            save_checkpoint(stage, 0, [model], None, None, 0, padded, None, extra=extra)
            del model
        assets = os.path.join(stage, HF_ASSETS_DIR)
        os.makedirs(assets)
        copied = hf_io.copy_assets(hf_dir, assets)
    return {
        "out": os.path.abspath(out),
        "vocab_size": arch.vocab_size,
        "padded_vocab_size": padded,
        "tp": tp,
        "pp": pp,
        "tied": arch.tie_word_embeddings,
        "dtype": HF_DTYPE_NAMES[ckpt_dtype],
        "hf_files_kept": copied,
        "seconds": round(time.time() - start, 2),
    }


def _read_itemic(hf_dir: str, vocab_size: int) -> Optional[dict]:
    path = os.path.join(hf_dir, ITEMIC_JSON)
    if not os.path.isfile(path):
        return None
    data = hf_io.read_json(path)
    check_itemic(data, vocab_size, path)
    return data


def check_itemic(data: dict, vocab_size: int, where: str) -> None:
    last = data.get("last_id")
    if isinstance(last, int) and last >= vocab_size:
        raise ConfigError(f"{where}: last_id={last} is outside the model vocabulary ({vocab_size} rows)")
