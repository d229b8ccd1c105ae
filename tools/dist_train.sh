#!/usr/bin/env bash
# Train on N processes with torchrun: tools/dist_train.sh CONFIG N [train.py options]
# On GPUs each process takes one device (NCCL); without CUDA the processes share the CPU (gloo).
# Several nodes: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) as torchrun expects.
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$PORT" --nproc_per_node="$NPROC" \
    "$HERE/train.py" "$CONFIG" --launcher pytorch "$@"
