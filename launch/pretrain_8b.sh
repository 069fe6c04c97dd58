#!/bin/bash
# Qwen3-8B stage 1 / stage 2 pre-training on 8xH100 nodes (32K context, TP=4 x CP=2, SP, FP8 hybrid).
#   DATA_BLEND="0.6234 /data/general_text_document 0.3766 /data/rec_text_document" \
#   TOKENIZER=/ckpt/qwen3-8b-itemic STAGE=2 INIT_FROM=/ckpt/stage1 sbatch launch/pretrain_8b.sh
# Submit from the repository root. DRY_RUN=1 prints the srun/torchrun command instead of running it.
# The batch log goes to the submit directory as <job name>-<job id>.out: SLURM opens it before this script
# runs, so it cannot live in a directory the script would create (`sbatch --output=DIR/%x-%j.out` if DIR exists).
#SBATCH --job-name=megarec-qwen3-8b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --signal=USR1@600
MODEL_TAG=8b
TP=${TP:-4}
PP=${PP:-1}
CP=${CP:-2}
SP=${SP:-true}
source "${MEGAREC_HOME:-${SLURM_SUBMIT_DIR:-$(pwd)}}/launch/_slurm_common.sh"
