#!/bin/bash
# The GPU checks behind docs/gpu-check.log, as they ran on a lent H100 (two calls: this
# script's first half, then, after the CUDA fixes, its second half). Run from the repo root
# on a CUDA machine with the package installed; OUT is where the log goes.
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R
ff() { local name=$1; shift; echo "== $name: $*"; /usr/bin/time -f "   wall %e s" timeout 150 python3 -m pipeline train --out $R/$name --seed 0 "$@" 2>&1 | grep -vE "samples \(|^\s*$" | tail -4; }
{
nvidia-smi -L; nproc
python3 -c "import torch,zmq,msgpack,mlxtend;print('torch', torch.__version__, 'zmq', zmq.__version__, torch.cuda.get_device_name())"
C3=cuda:0,cuda:0,cuda:0
ff lock-cuda --schedule lockstep --train.device cuda
ff bp-cuda --schedule backprop --train.device cuda
ff pipe-local-cuda --schedule pipelined --devices $C3
ff pipe-zmq-cuda --schedule pipelined --transport zmq --devices $C3 --net.base_port 6100
echo "== torchrun 5 ranks, 1 GPU -> auto backend must pick gloo; stages on cuda:0"
timeout 150 python3 -m torch.distributed.run --standalone --nproc-per-node 5 -m pipeline train --transport dist --schedule pipelined --devices $C3 --out $R/pipe-dist-cuda --seed 0 2>&1 | grep -iE "backend|gloo|nccl|accuracy|error" | tail -5
P="--layers 784,2000,2000,2000,2000 --epochs 10 --train.eval_every 0"
ff lock-2000x4-cpu16 --schedule lockstep $P
ff lock-2000x4-cuda --schedule lockstep --train.device cuda $P
ff pipe-2000x4-cuda --schedule pipelined --devices $C3,cuda:0 $P
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob('/tmp/r/*/summary.json')):
    d = json.load(open(f))
    print(f"{os.path.basename(os.path.dirname(f)):20s} acc {d.get('test_accuracy')}  wall {d.get('wall_seconds', 0):.1f}s  {d.get('samples_per_second', 0):.0f} samples/s  steady {d.get('steady_samples_per_second', '-')}")
PY
echo "== unit tests"
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/unit 2>&1 | tail -6
} 2>&1 | tee $OUT/gpu-check.log
tar czf $OUT/summaries.tgz -C /tmp/r $(cd /tmp/r && ls -d */summary.json */stage*.jsonl 2>/dev/null) 2>/dev/null

# ---- second call, after the fixes
R=/tmp/r; mkdir -p $R
ff() { local name=$1; shift; echo "== $name: $*"; timeout 150 python3 -m pipeline train --out $R/$name --seed 0 "$@" 2>&1 | grep -vE "samples \(|^\s*$" | tail -4; }
{
nvidia-smi -L
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/integration/test_cuda.py 2>&1 | tail -4
ff lock-cuda --schedule lockstep --train.device cuda
P="--layers 784,2000,2000,2000,2000 --epochs 10 --train.eval_every 0"
ff lock-2000x4-cuda --schedule lockstep --train.device cuda $P
ff pipe-2000x4-cuda --schedule pipelined --devices cuda:0,cuda:0,cuda:0,cuda:0 $P
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob('/tmp/r/*/summary.json')):
    d = json.load(open(f))
    print(f"{os.path.basename(os.path.dirname(f)):20s} acc {d.get('test_accuracy')}  wall {d.get('wall_seconds', 0):.1f}s  {d.get('samples_per_second', 0):.0f} samples/s  steady {d.get('steady_samples_per_second', '-')}")
PY
} 2>&1 | tee $OUT/gpu-check2.log
