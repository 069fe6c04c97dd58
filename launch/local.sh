#!/bin/bash
# Single-node pre-training with torchrun (one worker per GPU, or NPROC CPU workers without GPUs).
#   launch/local.sh --config configs/pretrain/tiny_cpu.yaml data.mock=true parallel.tensor_model_parallel_size=2
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
PYTHON=${PYTHON:-python}
if [[ -z ${NPROC:-} ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        NPROC=$(nvidia-smi -L | wc -l)
    else
        NPROC=2
    fi
fi
command -v nvidia-smi >/dev/null 2>&1 && export CUDA_DEVICE_MAX_CONNECTIONS=1
CMD=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m megarec pretrain "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then
    line=$(printf '%q ' "${CMD[@]}")
    echo "${line% }"
    exit 0
fi
exec "${CMD[@]}"
