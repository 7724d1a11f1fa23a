#!/usr/bin/env bash
# The zmq cluster by hand on one machine: sink, stages and source as separate
# `ffpipe worker` processes over tcp on 127.0.0.1 — the same commands a compose file or
# several hosts run, each with its role and index. (`ffpipe train --transport zmq` does the
# same from Python; this script shows the processes.)
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bash launch/zmq_local.sh [ffpipe train options]

Starts `python -m pipeline worker --role sink|stage|source --index K [options] --transport zmq`
for the sink, every stage and the source, in the background on this machine, and waits for
the sink. Receivers listen on 127.0.0.1 at --net.base_port+1.. (stage k at base_port+k+1,
the sink last); the sink also hosts the version board at base_port (--net.store). Every
option is passed to each worker, so the run folder (--out) gets the same config.json, logs,
checkpoints and summary.json as `ffpipe train`.

  bash launch/zmq_local.sh --dataset synthetic --layers 64,100,100 --out runs/x

Exit code: the sink's. If any worker fails, the others are stopped and the script exits 1.
Ctrl-C or SIGTERM stops every worker cleanly (each writes its checkpoint); rerun with
--resume to continue.

Environment:
  PYTHON         interpreter with the package installed (default: python3)
  STOP_TIMEOUT   seconds workers get to exit after the sink finishes or a stop (default 10)
USAGE
}

for arg in "$@"; do
  case "$arg" in -h|--help) usage; exit 0 ;; esac
done

PYTHON=${PYTHON:-python3}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
# K and the version-board address from the same options the workers parse.
read -r K STORE < <("$PYTHON" -P -m pipeline.launch_info "$@" --transport zmq) || true
[ -n "${K:-}" ] || exit 2
extra=(--transport zmq)
[ "$STORE" = "-" ] || extra+=(--net.store="$STORE")

declare -A name_of=()
pids=()
start() {  # start ROLE INDEX OPTIONS...
  local role=$1 index=$2
  shift 2
  # -P: a pipeline.py in the working directory cannot shadow the installed package
  "$PYTHON" -P -m pipeline worker --role "$role" --index "$index" "$@" "${extra[@]}" &
  pids+=($!)
  if [ "$role" = stage ]; then name_of[$!]="stage $index"; else name_of[$!]=$role; fi
}

stop_all() {  # SIGTERM = "checkpoint and exit" for a worker; kill what outlives the timeout
  local p deadline=$((SECONDS + STOP_TIMEOUT))
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap 'trap - INT TERM; echo "zmq_local.sh: stopping every worker" >&2; stop_all; exit 130' INT
trap 'trap - INT TERM; stop_all; exit 143' TERM

start sink 0 "$@"
sink=${pids[0]}
for ((k = K - 1; k >= 0; k--)); do start stage "$k" "$@"; done
start source 0 "$@"

# Wait for the sink; stop everything as soon as any worker fails.
code=0
live=("${pids[@]}")
while true; do
  done_pid=
  rc=0
  wait -n -p done_pid "${live[@]}" || rc=$?
  [ -n "$done_pid" ] || continue  # a signal interrupted the wait
  rest=()
  for p in "${live[@]}"; do [ "$p" = "$done_pid" ] || rest+=("$p"); done
  live=("${rest[@]}")
  if [ "$done_pid" = "$sink" ]; then code=$rc; break; fi
  if [ "$rc" -ne 0 ]; then
    echo "zmq_local.sh: error: ${name_of[$done_pid]} died (exit code $rc); stopped the other workers" >&2
    trap - INT TERM
    stop_all
    exit 1
  fi
done

# The sink is done: the rest got the stop message and exit by themselves.
deadline=$((SECONDS + STOP_TIMEOUT))
for p in "${pids[@]}"; do
  while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
done
trap - INT TERM
stop_all
exit "$code"
