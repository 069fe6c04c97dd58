#!/bin/bash
# Single-node pre-training with torchrun (one worker per GPU, or NPROC CPU workers without GPUs).
#   launch/local.sh --config configs/pretrain/tiny_cpu.yaml data.mock=true parallel.tensor_model_parallel_size=2
# DRY_RUN=1 prints the GPU environment settings (NAME=value lines, none on CPU) and then the command.
set -euo pipefail
PYTHON=${PYTHON:-python}
GPU_ENV=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    [[ -n ${NPROC:-} ]] || NPROC=$(nvidia-smi -L | wc -l)
    # Same settings as the SLURM launchers (see _slurm_common.sh); each can be overridden from the environment.
    export CUDA_DEVICE_MAX_CONNECTIONS=1
    export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
    export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
    GPU_ENV=(CUDA_DEVICE_MAX_CONNECTIONS PYTORCH_CUDA_ALLOC_CONF TORCH_NCCL_AVOID_RECORD_STREAMS)
fi
NPROC=${NPROC:-2}
CMD=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m megarec pretrain "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then
    for var in ${GPU_ENV[@]+"${GPU_ENV[@]}"}; do  # bash < 4.4 calls an empty array unbound under set -u
        echo "$var=${!var}"
    done
    line=$(printf '%q ' "${CMD[@]}")
    echo "${line% }"
    exit 0
fi
exec "${CMD[@]}"
