# Shared body of the SLURM pre-training scripts (sourced, not run). The calling script sets the
# model-specific defaults; every value below can be overridden from the environment.
# Launch shape: srun starts ONE torchrun per node; torchrun rendezvous (c10d) on the first host starts
# one worker per GPU. SLURM's early-warning signal (USR1) reaches the workers directly, which save a
# checkpoint and exit; torchrun itself ignores USR1 (inherited SIG_IGN), so it does not die first.
set -euo pipefail

MEGAREC_HOME=${MEGAREC_HOME:-${SLURM_SUBMIT_DIR:-$(pwd)}}
PYTHON=${PYTHON:-python}
STAGE=${STAGE:-2}
CONFIG=${CONFIG:-$MEGAREC_HOME/configs/pretrain/stage${STAGE}_${MODEL_TAG}.yaml}
RUN_NAME=${RUN_NAME:-qwen3-${MODEL_TAG}-stage${STAGE}}
SAVE_DIR=${SAVE_DIR:-$MEGAREC_HOME/checkpoints/$RUN_NAME}
RUN_DIR=${RUN_DIR:-$MEGAREC_HOME/runs/$RUN_NAME}
INIT_FROM=${INIT_FROM:-}
DATA_BLEND=${DATA_BLEND:-}
TOKENIZER=${TOKENIZER:-}
SEQ_LENGTH=${SEQ_LENGTH:-32768}
MBS=${MBS:-1}
GBS=${GBS:-128}
TRAIN_ITERS=${TRAIN_ITERS:-}
FP8=${FP8:-hybrid}
# The first job on a new blend builds the dataset index on rank 0 while every other rank waits in a
# barrier; the 10-minute default process-group timeout can run out on a corpus of billions of tokens.
PG_TIMEOUT_MINUTES=${PG_TIMEOUT_MINUTES:-60}
EXTRA_OVERRIDES=${EXTRA_OVERRIDES:-}

NNODES=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${SLURM_JOB_ID:-megarec}
# Since SLURM 22.05 srun no longer inherits --cpus-per-task from sbatch: without it each task gets one CPU
# and torchrun's workers (and their data loaders) share it.
CPUS_PER_TASK=${CPUS_PER_TASK:-${SLURM_CPUS_PER_TASK:-}}

first_host() {  # first host of a SLURM nodelist: 'gpu[003-005,010],x' -> gpu003
    local nodelist=$1
    if command -v scontrol >/dev/null 2>&1; then
        scontrol show hostnames "$nodelist" | head -n 1
        return
    fi
    local prefix=${nodelist%%[[,]*}
    if [[ $nodelist == "$prefix["* ]]; then
        local inner=${nodelist#*[}
        inner=${inner%%]*}
        echo "$prefix${inner%%[,-]*}"
    else
        echo "$prefix"
    fi
}

if [[ -z ${SLURM_JOB_NODELIST:-} ]]; then
    echo "error: no SLURM allocation (SLURM_JOB_NODELIST unset): submit with sbatch, or use launch/local.sh" >&2
    exit 2
fi
MASTER_ADDR=${MASTER_ADDR:-$(first_host "$SLURM_JOB_NODELIST")}

if [[ ${DRY_RUN:-0} != 1 ]]; then
    [[ -n $DATA_BLEND ]] || { echo "error: set DATA_BLEND='W1 PREFIX1 W2 PREFIX2 ...' (or one PREFIX)" >&2; exit 2; }
    [[ -n $TOKENIZER ]] || { echo "error: set TOKENIZER=<expanded HF tokenizer dir with itemic.json>" >&2; exit 2; }
fi

export CUDA_DEVICE_MAX_CONNECTIONS=1     # keeps TP communication ordered ahead of compute kernels
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # less fragmentation at 32K
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}  # no recordStream: NCCL buffers are reused sooner
export WANDB_MODE=${WANDB_MODE:-offline}

OVERRIDES=(
    "parallel.tensor_model_parallel_size=$TP"
    "parallel.pipeline_model_parallel_size=$PP"
    "parallel.context_parallel_size=$CP"
    "parallel.sequence_parallel=$SP"
    "parallel.distributed_timeout_minutes=$PG_TIMEOUT_MINUTES"
    "model.fp8=$FP8"
    "train.seq_length=$SEQ_LENGTH"
    "train.micro_batch_size=$MBS"
    "train.global_batch_size=$GBS"
    "checkpoint.dir=$SAVE_DIR"
    "logging.run_dir=$RUN_DIR"
    "logging.wandb_name=$RUN_NAME"
    "data.data_path=[${DATA_BLEND// /, }]"
    "data.tokenizer=$TOKENIZER"
)
[[ -n $TRAIN_ITERS ]] && OVERRIDES+=("train.steps=$TRAIN_ITERS")
[[ -n $INIT_FROM ]] && OVERRIDES+=("checkpoint.init_from=$INIT_FROM")
# shellcheck disable=SC2206
OVERRIDES+=($EXTRA_OVERRIDES)

TORCHRUN=("$PYTHON" -m torch.distributed.run
    --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE"
    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$RDZV_ID"
    -m megarec pretrain --config "$CONFIG")
WORKER_CMD=$(printf '%q ' "${TORCHRUN[@]}" "${OVERRIDES[@]}")
WORKER_CMD=${WORKER_CMD% }
SRUN=(srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 --chdir="$MEGAREC_HOME")
[[ -n $CPUS_PER_TASK ]] && SRUN+=(--cpus-per-task="$CPUS_PER_TASK")
SRUN+=(bash -c "trap '' USR1; exec $WORKER_CMD")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT NNODES=$NNODES GPUS_PER_NODE=$GPUS_PER_NODE"
    for var in CUDA_DEVICE_MAX_CONNECTIONS PYTORCH_CUDA_ALLOC_CONF TORCH_NCCL_AVOID_RECORD_STREAMS; do
        echo "$var=${!var}"
    done
    line=$(printf '%q ' "${SRUN[@]}")
    echo "${line% }"
    exit 0
fi
mkdir -p "$RUN_DIR" "$SAVE_DIR"
"${SRUN[@]}"
