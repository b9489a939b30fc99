#!/bin/bash
# One shard of a `diffsteer batch` run per Slurm array task, all writing into one
# shared folder: `sbatch --array=0-7 scripts/slurm-batch.sh` (8 shards). A task that
# is re-run (requeue, preemption, a lost node) resumes: nothing is made twice.
#SBATCH --job-name=diffsteer-batch
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
set -euo pipefail
JOBS=${JOBS:-jobs.jsonl}
OUT_DIR=${OUT_DIR:-runs/jobs}
DIFFSTEER=${DIFFSTEER:-diffsteer}
srun "$DIFFSTEER" --threads "${SLURM_CPUS_PER_TASK:-1}" batch "$JOBS" \
    --out "$OUT_DIR" --batch "${BATCH:-16}" --quiet \
    --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"
