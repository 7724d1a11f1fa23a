#!/bin/bash
# Issue 15's GPU measurements, prepared to run once on a lent GPU (the device tool: one H200,
# 15 minutes of device time in all, start-up included). Not yet run: no GPU was lent to the
# session that wrote it. From the repo root on the GPU machine:
#
#   bash docs/gpu-check-15.sh            # OUT=folder for the log (default .)
#
# The H200 image has torch, msgpack, safetensors, tqdm, matplotlib; pyzmq and mlxtend travel as
# wheels in .whl/ (see the device tool's README), installed first when present.
# What it reports, in order (~8 minutes):
#   1. the CUDA tests (every schedule on CUDA, the device ring, bf16/fp16 on CUDA)
#   2. ffpipe bench roofline for 784-2000x4 at batch 100 and 1000, four stages on the one GPU,
#      fp32 / bf16 / fp16: GEMM-only TFLOP/s, train-step rate per layer alone, lockstep,
#      each pipelined stage, and the ratio achieved / GEMM-only; peak CUDA memory
#   3. the same network trained 3 epochs, lockstep and pipelined, bf16: samples/s, and
#      device_bytes_sent per stage (> 0 = stage-to-stage activations never left the GPU);
#      at batch 100 also with --train.step_graph off (eager steps against CUDA-graph ones)
set -u
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
R=/tmp/r15; mkdir -p $R
P4="--layers 784,2000,2000,2000,2000 --devices cuda:0,cuda:0,cuda:0,cuda:0"
{
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
echo "== 1. CUDA tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/integration/test_cuda.py tests/unit/test_device_ring.py tests/unit/test_precision.py tests/unit/test_step_graph.py 2>&1 | tail -8
for B in 100 1000; do
  echo "== 2. roofline, batch $B"
  timeout 200 python3 -m pipeline bench roofline $P4 --batch-size $B --reps 2 \
    --precisions fp32,bf16,fp16 --train.precision bf16 2>&1 | grep -v "^\s*$" | tail -40
done
for B in 100 1000; do
  for S in lockstep pipelined; do
    echo "== 3. $S, batch $B, bf16, 3 epochs"
    D=$([ $S = lockstep ] && echo "--train.device cuda --layers 784,2000,2000,2000,2000" || echo "$P4")
    timeout 120 python3 -m pipeline train --schedule $S $D --batch-size $B --epochs 3 \
      --train.precision bf16 --eval-every 0 --probe-every 0 --out $R/$S-b$B 2>&1 | tail -2
    [ $B = 100 ] && timeout 120 python3 -m pipeline train --schedule $S $D --batch-size $B \
      --epochs 3 --train.precision bf16 --eval-every 0 --probe-every 0 --train.step_graph off \
      --out $R/$S-b$B-eager 2>&1 | tail -2
  done
done
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob('/tmp/r15/*/summary.json')):
    d = json.load(open(f))
    dev = [s.get('device_bytes_sent') for s in d.get('stages', [])]
    print(f"{os.path.basename(os.path.dirname(f)):16s} acc {d.get('test_accuracy')}  "
          f"{d.get('samples_per_second', 0):.0f} samples/s  steady {d.get('steady_samples_per_second')}"
          f"  precision {d.get('precision')}  device_bytes_sent {dev}")
PY
} 2>&1 | tee $OUT/gpu-check-15.log
