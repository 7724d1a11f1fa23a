#!/usr/bin/env bash
# One node, one process per role: torchrun starts K+2 ranks (source, K stages, sink) that
# talk over torch.distributed (gloo on CPU, NCCL when every rank owns a GPU).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bash launch/torchrun_local.sh [ffpipe train options]

Runs `torchrun --standalone --nproc-per-node=K+2 -m pipeline train --transport dist ...`
on this machine: rank 0 is the source, ranks 1..K the stages, rank K+1 the sink. K, the
number of FF layers, is read from the same options (--layers, --model.layers, --config),
so the world always matches the config. Every option is passed to `ffpipe train`; the run
folder (--out) gets the same config.json, logs, checkpoints and summary.json.

  bash launch/torchrun_local.sh --dataset synthetic --layers 64,100,100 --out runs/x

Environment:
  MAX_RESTARTS     torchrun --max-restarts (default 0); after a restart every rank
                   resumes from its checkpoint in --out (set --pipeline.ckpt_every)
  PYTHON           interpreter with the package installed (default: python3)
  OMP_NUM_THREADS  threads per rank (default 1; --threads-per-stage sets the stages')
USAGE
}

for arg in "$@"; do
  case "$arg" in -h|--help) usage; exit 0 ;; esac
done

PYTHON=${PYTHON:-python3}
# K from the same options `ffpipe train` will parse (a bad option fails here, in one line).
read -r K _ < <("$PYTHON" -P -m pipeline.launch_info "$@") || true
[ -n "${K:-}" ] || exit 2

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# --transport dist goes last so it wins over any --transport in the options. -P: a
# pipeline.py (or torch.py) in the working directory cannot shadow the installed package.
exec "$PYTHON" -P -m torch.distributed.run --no-python --standalone --nproc-per-node="$((K + 2))" \
  --max-restarts="${MAX_RESTARTS:-0}" \
  "$PYTHON" -P -m pipeline train "$@" --transport dist
