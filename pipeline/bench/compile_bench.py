"""`ffpipe bench compile`: does `torch.compile` of the train step pay for itself?

For each distinct layer shape of the config, in a fresh process with a stage's threads:
the seconds `torch.compile` takes to compile the closed-form step (`ff_grad`: the two
GEMMs and the element-wise work around them, which inductor fuses into a few loops), the
median seconds per call of the eager and the compiled function, and so the number of
steps after which the compile time is paid back, next to the steps one layer takes in
the configured run. The optimizer update (torch's fused Adam, already one kernel) is not
part of it. Importing `torch._dynamo` (~2 s per process) is counted in the compile time.
"""

from __future__ import annotations

import math
import time

import torch

from pipeline import precision
from pipeline.bench.gemm import median_seconds
from pipeline.bench.pipeline_bench import in_child
from pipeline.config import RunConfig, from_dict, to_dict
from pipeline.ff import normalize
from pipeline.ff_grad import layer_step_grads
from pipeline.layer_trainer import LayerTrainer
from pipeline.runtime.roles import setup_process, stage_device


def _measure(cfg_dict: dict, k: int, reps: int, seconds: float, out_q) -> None:
    cfg = from_dict(cfg_dict)
    device = stage_device(cfg, k)
    setup_process(cfg.pipeline.threads_per_stage, device)
    tr = LayerTrainer(k, cfg, device)
    B, dev = cfg.train.batch_size, torch.device(device)
    gen = torch.Generator().manual_seed(k)
    pos, neg = (normalize(torch.rand(B, tr.d_in, generator=gen)).to(dev) for _ in range(2))
    kw = dict(normalization=cfg.model.normalization, compute_dtype=tr.layer.compute_dtype,
              goodness=cfg.model.goodness, loss=cfg.train.loss, theta=tr.theta,
              alpha=tr.alpha, peer_lambda=cfg.train.peer_lambda, peer_mean=tr.peer_mean)
    w, b = tr.layer.linear.weight.detach(), tr.layer.linear.bias.detach()
    t0 = time.perf_counter()
    compiled = torch.compile(layer_step_grads, dynamic=False)
    compiled(w, b, pos, neg, **kw)
    compile_s = time.perf_counter() - t0
    eager, fused = [], []
    for _ in range(reps):  # interleaved, so both see the same load
        eager.append(median_seconds(lambda: layer_step_grads(w, b, pos, neg, **kw), dev, seconds))
        fused.append(median_seconds(lambda: compiled(w, b, pos, neg, **kw), dev, seconds))
    out_q.put({"compile_s": compile_s, "eager_s": sorted(eager)[reps // 2],
               "compiled_s": sorted(fused)[reps // 2]})


def run_compile_bench(cfg: RunConfig, n_train: int, reps: int, seconds: float) -> None:
    steps = cfg.train.epochs * math.ceil(n_train / cfg.train.batch_size)
    dtype = precision.resolve(cfg.train.precision, torch.device(stage_device(cfg, 0)))
    print(f"torch.compile of the train step's gradients ({str(dtype).split('.')[-1]}, "
          f"batch {cfg.train.batch_size}, {cfg.pipeline.threads_per_stage} thread(s)); "
          f"a layer of this run takes {steps:,} steps")
    print(f"{'layer':>12} {'compile s':>10} {'eager ms':>9} {'compiled ms':>12} "
          f"{'saved ms':>9} {'break-even steps':>17}  pays off")
    seen = {}
    for k in range(cfg.n_layers):
        shape = (cfg.model.layers[k], cfg.model.layers[k + 1])
        if shape in seen:
            continue
        r = seen[shape] = in_child(_measure, to_dict(cfg), k, reps, seconds)
        saved = r["eager_s"] - r["compiled_s"]
        even = r["compile_s"] / saved if saved > 0 else math.inf
        print(f"{shape[0]:>5}x{shape[1]:<6} {r['compile_s']:>10.1f} {r['eager_s'] * 1e3:>9.3f} "
              f"{r['compiled_s'] * 1e3:>12.3f} {saved * 1e3:>9.3f} {even:>17,.0f}  "
              f"{'yes' if even < steps else 'no'}")
