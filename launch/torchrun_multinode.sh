#!/usr/bin/env bash
# Several nodes: run this on every node with the same options; torchrun's c10d rendezvous
# joins them into one world of K+2 ranks (source, K stages, sink) over torch.distributed.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: NNODES=N NODE_RANK=I RDZV_ENDPOINT=HOST:PORT bash launch/torchrun_multinode.sh [ffpipe train options]

Run on each of the NNODES nodes with the same options. The K+2 ranks (rank 0 the source,
1..K the stages, K+1 the sink; K = number of FF layers, read from --layers,
--model.layers or --config) are split evenly: NPROC_PER_NODE ranks per node, which
defaults to ceil((K+2)/NNODES) and must satisfy NNODES * NPROC_PER_NODE == K+2
(e.g. 4 layers -> 6 ranks -> NNODES=2 x 3 or NNODES=3 x 2).

  # node A (also hosts the rendezvous)           # node B
  NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=A:29400 \    NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=A:29400 \
    bash launch/torchrun_multinode.sh \             bash launch/torchrun_multinode.sh \
      --layers 784,1000,1000,1000,1000 --out /shared/runs/x     (same options)

The rendezvous decides which node gets which ranks (node order is not guaranteed by
NODE_RANK under c10d). Every node needs the data (rank 0 reads it) and --out should be a
shared folder: each rank writes its own logs and checkpoints there, the sink summary.json.

Environment:
  NNODES, NODE_RANK, RDZV_ENDPOINT   required (RDZV_ENDPOINT = host:port of the rendezvous)
  RDZV_ID          job id shared by all nodes (default ffpipe)
  NPROC_PER_NODE   ranks on this node (default ceil((K+2)/NNODES))
  MAX_RESTARTS     torchrun --max-restarts (default 0); after a restart every rank
                   resumes from its checkpoint in --out (set --pipeline.ckpt_every)
  PYTHON           interpreter with the package installed (default: python3)
  GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME   network interface between the nodes
USAGE
}

for arg in "$@"; do
  case "$arg" in -h|--help) usage; exit 0 ;; esac
done

die() { echo "torchrun_multinode.sh: error: $*" >&2; exit 2; }
[ -n "${NNODES:-}" ] || die "NNODES is not set: the number of nodes, e.g. NNODES=2 (see --help)"
[ -n "${NODE_RANK:-}" ] || die "NODE_RANK is not set: this node's index 0..NNODES-1 (see --help)"
[ -n "${RDZV_ENDPOINT:-}" ] || die "RDZV_ENDPOINT is not set: host:port of the rendezvous, e.g. nodeA:29400 (see --help)"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "NNODES must be a positive integer, got '$NNODES'"
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NNODES" ] \
  || die "NODE_RANK must be in 0..$((NNODES - 1)), got '$NODE_RANK'"

PYTHON=${PYTHON:-python3}
# K from the same options `ffpipe train` will parse (a bad option fails here, in one line).
read -r K _ < <("$PYTHON" -P -m pipeline.launch_info "$@") || true
[ -n "${K:-}" ] || exit 2
WORLD=$((K + 2))
NPROC_PER_NODE=${NPROC_PER_NODE:-$(((WORLD + NNODES - 1) / NNODES))}
[ $((NNODES * NPROC_PER_NODE)) -eq "$WORLD" ] || die "$K layers need $WORLD ranks, but \
NNODES=$NNODES x NPROC_PER_NODE=$NPROC_PER_NODE = $((NNODES * NPROC_PER_NODE)); pick NNODES \
dividing $WORLD (or change --layers)"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# --transport dist goes last so it wins over any --transport in the options. -P: a
# pipeline.py (or torch.py) in the working directory cannot shadow the installed package.
exec "$PYTHON" -P -m torch.distributed.run --no-python --nnodes="$NNODES" --node-rank="$NODE_RANK" \
  --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-ffpipe}" \
  --nproc-per-node="$NPROC_PER_NODE" --max-restarts="${MAX_RESTARTS:-0}" \
  "$PYTHON" -P -m pipeline train "$@" --transport dist
