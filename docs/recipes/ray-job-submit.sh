#!/bin/bash
# A Ray Tune sweep submitted to a running Ray cluster (`ray up`, KubeRay, a SLURM-started cluster) with
# `ray job submit`: the driver runs on the cluster's head, Ray sets $RAY_ADDRESS for it, and the sweep joins that
# cluster (the data check then runs on the nodes, not on the head). The store must be a folder every node mounts
# at the same path.
#
#   RAY_API=http://head-host:8265 docs/recipes/ray-job-submit.sh
set -euo pipefail

RAY_API=${RAY_API:-http://127.0.0.1:8265}      # the head's dashboard / job API
SPACE=${SPACE:-search_spaces/quickstart.yaml}
STORE=${STORE:-/mnt/stabench/runs}
GPUS_PER_TRIAL=${GPUS_PER_TRIAL:-1}

# --working-dir ships this checkout (the space files, stabench itself when nodes do not have it installed);
# runs/ and .venv/ stay here.
ray job submit --address "$RAY_API" --working-dir . \
    --runtime-env-json '{"excludes": ["runs", ".venv", "results"]}' -- \
    stabench sweep "$SPACE" --backend ray --store "$STORE" --gpus-per-trial "$GPUS_PER_TRIAL" --wandb offline
