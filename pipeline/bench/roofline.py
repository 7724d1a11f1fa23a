"""`ffpipe bench roofline`: how close the FF train step runs to what the hardware's matrix
units do alone, for the exact shapes of a config's step.

    GEMM-only   the step's two GEMMs alone (`bench.gemm`), per layer, in float32 and
                bfloat16 (float16 too on CUDA, or when asked), with the stage's threads
    layer k     `LayerTrainer.train_step` of layer k alone, in a fresh process with the
                stage's threads, at the config's precision and at each one asked for
    lockstep    every layer in one process with K x threads_per_stage threads (at most
                the machine's cores: more threads than cores only make them wait)
    pipelined   the real `ffpipe train` (source, K stages, sink) in a subprocess: the
                sink's steady rate, each stage's rate while busy (its waits for input and
                for room downstream left out), peak RSS of every process, and first-batch
                latency (command start to the first step of each stage and to the first
                train message at the sink)

FLOP/s count only the GEMM FLOPs the step really does (`bench.gemm`: forward and weight
gradient, no input gradient); a census of one real step checks the count and tells the
dtype its GEMMs ran in, which is the GEMM-only rate each step is compared with.
"of GEMM-only" is achieved / GEMM-only, taken within each repetition (the layer and
lockstep rows measure both in one process, seconds apart; a pipelined stage is compared
with its layer's GEMM-only rate from the same repetition), median over repetitions. For
the whole pipeline it is the steady rate over the slowest layer's GEMM-only rate: a
pipeline goes no faster than its slowest stage.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from pipeline.bench.gemm import (DTYPE_NAMES, DTYPES, census, gemm_only_seconds,
                                 main_dtype, median_seconds, step_gemm_flops)
from pipeline.bench.launched import launch, median_of, sized_for_steps
from pipeline.bench.pipeline_bench import in_child
from pipeline.config import RunConfig, from_dict, to_dict
from pipeline.ff import normalize
from pipeline.layer_trainer import LayerTrainer
from pipeline.runtime.process_log import peak_rss_mb
from pipeline.runtime.roles import setup_process, stage_device


def precision_list(cfg: RunConfig, asked: list[str]) -> list[str]:
    """The config's precision, then each one asked for, once each."""
    return list(dict.fromkeys([cfg.train.precision, *asked]))


def default_dtypes(device: str) -> list[str]:
    return ["fp32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "bf16"]


def _inputs(cfg: RunConfig, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(k)
    B, d = cfg.train.batch_size, cfg.model.layers[k]
    pos, neg = (normalize(torch.rand(B, d, generator=gen), cfg.model.normalization)
                for _ in range(2))
    return pos.to(device), neg.to(device)


def _measure_steps(cfg: RunConfig, layers: list[int], device: str, precisions: list[str],
                   dtypes: list[str], seconds: float, gemm_only: bool = True) -> dict:
    """In this process: the GEMM-only seconds of `layers` together in each dtype (and in
    the dtype each step's GEMMs ran in, unless not `gemm_only`), and a train step over
    them at each precision (seconds, census)."""
    dev = torch.device(device)
    B = cfg.train.batch_size
    shapes = [(cfg.model.layers[k], cfg.model.layers[k + 1]) for k in layers]

    def gemm_s(name):
        return sum(gemm_only_seconds(B, i, o, DTYPES[name], dev, seconds) for i, o in shapes)

    gemm = {name: gemm_s(name) for name in dtypes}
    steps = {}
    for p in precisions:
        cfg.train.precision = p
        trainers = [LayerTrainer(k, cfg, device) for k in layers]
        pos, neg = _inputs(cfg, layers[0], dev)

        def step():
            x_pos, x_neg = pos, neg
            for tr in trainers:
                x_pos, x_neg, _ = tr.train_step(x_pos, x_neg, 0.25)

        gemms = census(step)
        dtype = DTYPE_NAMES.get(main_dtype(gemms))
        if gemm_only and dtype is not None and dtype not in gemm:
            gemm[dtype] = gemm_s(dtype)
        steps[p] = {"step_s": median_seconds(step, dev, seconds), "gemms_in": dtype,
                    "census_flops": None if gemms is None else sum(f for _, f, _ in gemms),
                    "skipped_steps": sum(tr.skipped_steps for tr in trainers)}
    out = {"gemm_s": gemm, "steps": steps, "peak_rss_mb": peak_rss_mb()}
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / (1 << 20)
    return out


def _layer_child(cfg_dict, k, precisions, dtypes, seconds, out_q) -> None:
    cfg = from_dict(cfg_dict)
    device = stage_device(cfg, k)
    setup_process(cfg.pipeline.threads_per_stage, device)
    out_q.put(_measure_steps(cfg, [k], device, precisions, dtypes, seconds))


def _lockstep_child(cfg_dict, precisions, dtypes, seconds, gemm_only, out_q) -> None:
    cfg = from_dict(cfg_dict)
    setup_process(lockstep_threads(cfg), cfg.train.device)
    out_q.put(_measure_steps(cfg, list(range(cfg.n_layers)), cfg.train.device, precisions,
                             dtypes, seconds, gemm_only))


def lockstep_threads(cfg: RunConfig) -> int:
    """The cores the pipeline's stages have together, at most the machine's."""
    return min(cfg.n_layers * cfg.pipeline.threads_per_stage, os.cpu_count() or 1)


def lockstep_measurement(cfg: RunConfig, precisions: list[str], dtypes: list[str],
                         seconds: float, gemm_only: bool = True) -> dict:
    """Lockstep train steps (and GEMM-only rates) in a fresh process with every layer and
    `lockstep_threads` threads."""
    return in_child(_lockstep_child, to_dict(cfg), precisions, dtypes, seconds, gemm_only)


def rows_of(got: dict, flops: float, B: int, what: str, threads: str) -> list[dict]:
    """Table rows of one measurement (a layer, or lockstep) at each precision."""
    rows = []
    for p, s in got["steps"].items():
        gemm_s = got["gemm_s"].get(s["gemms_in"])
        rows.append({"what": what, "precision": p, "gemms_in": s["gemms_in"] or "?",
                     "threads": threads, "samples_per_s": B / s["step_s"],
                     "gflops": flops / s["step_s"] / 1e9,
                     "gemm_only_gflops": flops / gemm_s / 1e9 if gemm_s else None,
                     "of_gemm_only": gemm_s / s["step_s"] if gemm_s else None,
                     "peak_rss_mb": got.get("peak_rss_mb"),
                     "peak_cuda_mb": got.get("peak_cuda_mb"),
                     "census_flops": s["census_flops"], "flops": flops,
                     "skipped_steps": s["skipped_steps"]})
    return rows


def pipelined_rows(cfg: RunConfig, run, p: str, layer_rows: dict, flops: list[float],
                   tps: int) -> list[dict]:
    """Rows of one real pipelined run at precision p: the whole, then every stage."""
    B, K = cfg.train.batch_size, cfg.n_layers
    steady = run.summary["steady_samples_per_second"]  # None: too short a run to tell
    gemm_only = [layer_rows[(k, p)]["gemm_only_gflops"] * 1e9 / flops[k] * B
                 if layer_rows[(k, p)]["gemm_only_gflops"] else None for k in range(K)]
    bound = min(g for g in gemm_only if g) if any(gemm_only) else None
    rows = [{"what": "pipelined", "precision": p,
             "gemms_in": layer_rows[(0, p)]["gemms_in"], "threads": f"{K}x{tps}",
             "samples_per_s": steady,
             "gflops": steady * sum(flops) / B / 1e9 if steady else None,
             "gemm_only_gflops": bound * sum(flops) / B / 1e9 if bound else None,
             "of_gemm_only": steady / bound if bound and steady else None,
             **{f"first_{n}": v for n, v in run.first_batch().items()}}]
    for k in range(K):
        busy = run.stage_busy(k)
        proc = run.process("stage", k)
        rate = busy.get("busy_samples_per_s")
        rows.append({"what": f"  stage {k}", "precision": p,
                     "gemms_in": layer_rows[(k, p)]["gemms_in"], "threads": str(tps),
                     "samples_per_s": rate, "gflops": rate * flops[k] / B / 1e9 if rate else None,
                     "gemm_only_gflops": layer_rows[(k, p)]["gemm_only_gflops"],
                     "of_gemm_only": rate / gemm_only[k] if rate and gemm_only[k] else None,
                     "busy_fraction": busy.get("busy_fraction"),
                     "peak_rss_mb": proc.get("peak_rss_mb"),
                     "peak_cuda_mb": proc.get("peak_cuda_mb")})
    return rows


def measure_rep(cfg: RunConfig, precisions: list[str], dtypes: list[str], seconds: float,
                steps: int, n_train: int, folder: Path) -> tuple[list[dict], dict]:
    """One repetition: every row, and the GEMM-only seconds {(layer, dtype): s}."""
    K, B, tps = cfg.n_layers, cfg.train.batch_size, cfg.pipeline.threads_per_stage
    flops = [step_gemm_flops(B, cfg.model.layers[k], cfg.model.layers[k + 1])
             for k in range(K)]
    rows, layer_rows, gemm = [], {}, {}
    for k in range(K):
        got = in_child(_layer_child, to_dict(cfg), k, precisions, dtypes, seconds)
        gemm.update({(k, name): s for name, s in got["gemm_s"].items()})
        for row in rows_of(got, flops[k], B, f"layer {k}", str(tps)):
            layer_rows[(k, row["precision"])] = row
            rows.append(row)
    got = lockstep_measurement(cfg, precisions, dtypes, seconds)
    gemm.update({("all", name): s for name, s in got["gemm_s"].items()})
    rows += rows_of(got, sum(flops), B, "lockstep", str(lockstep_threads(cfg)))
    run_cfg = sized_for_steps(cfg, n_train, steps)
    for p in precisions:
        run_cfg.train.precision = p
        run = launch(run_cfg, folder / f"pipelined-{p}")
        rows += pipelined_rows(cfg, run, p, layer_rows, flops, tps)
    return rows, gemm


def merge_reps(reps: list[list[dict]]) -> list[dict]:
    """Row by row, the median of every number over the repetitions."""
    out = []
    for same in zip(*reps):
        out.append({**same[0], **median_of(list(same))})
    return out


def _fmt(v, spec: str) -> str:
    """format(v, spec), or a dash as wide as spec asks."""
    width = spec.split(".")[0]
    return f"{'-':>{width or 1}s}" if v is None else format(v, spec)


def _sig(v, width: int) -> str:
    """Three significant digits (a tiny rate still shows), right-aligned."""
    if v is None:
        return f"{'-':>{width}s}"
    return f"{v:>{width}.0f}" if abs(v) >= 100 else f"{float(f'{v:.3g}'):>{width}}"


def print_report(cfg: RunConfig, rows: list[dict], gemm: dict, dtypes: list[str],
                 reps: int, stream) -> None:
    K, tps = cfg.n_layers, cfg.pipeline.threads_per_stage
    B = cfg.train.batch_size
    print(f"\nGEMM FLOPs counted per train step of a layer: forward [2B, d_in] x [d_in, "
          f"d_out] and weight gradient [d_out, 2B] x [2B, d_in] = 8 x B x d_in x d_out "
          f"(B = {B}); no input-gradient GEMM (a layer's input is detached); elementwise "
          f"work not counted.", file=stream)
    census_ok = all(r["census_flops"] == r["flops"] for r in rows if "census_flops" in r
                    and r["census_flops"] is not None)
    print(f"census of one real step (every matrix multiply aten ran): "
          f"{'the same count for every layer and precision' if census_ok else 'DIFFERS'}",
          file=stream)
    print(f"\nGEMM-only GFLOP/s (median of {reps}):", file=stream)
    print("  " + f"{'layers':10s} {'d_in x d_out':>13s} {'threads':>7s} " +
          " ".join(f"{d:>8s}" for d in dtypes), file=stream)
    for k in [*range(K), "all"]:
        shape = (f"{cfg.model.layers[k]} x {cfg.model.layers[k + 1]}" if k != "all" else
                 "")
        flops = (step_gemm_flops(B, cfg.model.layers[k], cfg.model.layers[k + 1])
                 if k != "all" else sum(step_gemm_flops(B, cfg.model.layers[j],
                                                        cfg.model.layers[j + 1])
                                        for j in range(K)))
        cells = [_sig(flops / gemm[(k, d)] / 1e9 if gemm.get((k, d)) else None, 8)
                 for d in dtypes]
        print("  " + f"{'layer ' + str(k) if k != 'all' else 'all':10s} {shape:>13s} "
                     f"{tps if k != 'all' else lockstep_threads(cfg):>7d} " + " ".join(cells),
              file=stream)
    keys = [*range(K), "all"]
    for d in dtypes:
        if d != "fp32" and all(gemm.get((k, d)) and gemm.get((k, "fp32")) for k in keys):
            print(f"{d} runs the same GEMMs at " + ", ".join(
                f"{gemm[(k, 'fp32')] / gemm[(k, d)]:.2f}" for k in keys) +
                " x the fp32 rate (each row above, in order)", file=stream)
    cuda = any(r.get("peak_cuda_mb") is not None for r in rows)
    print(f"\ntrain steps (median of {reps}; GFLOP/s of the counted GEMM FLOPs; 'of GEMM' "
          f"= achieved / GEMM-only in the dtype the step's GEMMs ran in):", file=stream)
    print("  " + f"{'what':12s} {'precision':>9s} {'GEMMs in':>8s} {'threads':>7s} "
          f"{'samples/s':>10s} {'GFLOP/s':>8s} {'GEMM-only':>9s} {'of GEMM':>7s} "
          f"{'busy':>5s} {'peak RSS MiB':>12s}" + (" peak CUDA MiB" if cuda else ""),
          file=stream)
    for r in rows:
        busy = r.get("busy_fraction")
        print("  " + f"{r['what']:12s} {r['precision']:>9s} {r['gemms_in']:>8s} "
                     f"{r['threads']:>7s} {_fmt(r['samples_per_s'], '10.0f')} "
                     f"{_sig(r['gflops'], 8)} {_sig(r['gemm_only_gflops'], 9)} "
                     f"{_fmt(r['of_gemm_only'], '7.3f')} "
                     f"{_fmt(None if busy is None else 100 * busy, '4.0f'):>4s}"
                     f"{'%' if busy is not None else ' '} "
                     f"{_fmt(r.get('peak_rss_mb'), '12.0f')}" +
                     (f" {_fmt(r.get('peak_cuda_mb'), '13.0f')}" if cuda else ""), file=stream)
    for r in rows:
        if r["what"] == "pipelined":
            stages = ", ".join(f"stage {k} {_fmt(r.get(f'first_stage{k}_first_step_s'), '.1f')}"
                               for k in range(K))
            print(f"first batch, pipelined {r['precision']}: seconds from the command's "
                  f"start to the launch of the children {_fmt(r.get('first_launch_s'), '.1f')}, "
                  f"to each stage's first step ({stages}), to the first train message at "
                  f"the sink {_fmt(r.get('first_sink_first_train_s'), '.1f')}", file=stream)
        if r["what"].startswith("layer") and r["precision"] in DTYPES and \
                r["gemms_in"] not in ("?", r["precision"]):
            print(f"note: precision {r['precision']} ran its GEMMs in {r['gemms_in']} "
                  f"({r['what']}): this build does not apply train.precision", file=stream)
        if r.get("skipped_steps"):
            print(f"note: {r['what']} at {r['precision']} skipped {r['skipped_steps']:.0f} "
                  f"steps (non-finite loss or gradients): its rate is not a train step's",
                  file=stream)
    stream.flush()


def run_roofline_bench(cfg: RunConfig, n_train: int, steps: int, reps: int,
                       seconds: float, asked: list[str], stream=sys.stdout) -> list[dict]:
    device = stage_device(cfg, 0)
    precisions = precision_list(cfg, asked or default_dtypes(device))
    dtypes = list(dict.fromkeys(default_dtypes(device) + [p for p in asked if p in DTYPES]))
    print(f"roofline bench: layers {cfg.model.layers}, batch {cfg.train.batch_size} (+ as "
          f"many negatives), {cfg.pipeline.threads_per_stage} thread(s) per stage, "
          f"precisions {', '.join(precisions)}, {reps} rep(s), torch "
          f"{torch.__version__}, {device}", file=stream, flush=True)
    all_rows, gemms = [], []
    with tempfile.TemporaryDirectory(prefix="ffbench") as tmp:
        for rep in range(reps):
            rows, gemm = measure_rep(cfg, precisions, dtypes, seconds, steps, n_train,
                                     Path(tmp) / f"rep{rep}")
            all_rows.append(rows)
            gemms.append(gemm)
            print(f"  rep {rep + 1} of {reps} done", file=stream, flush=True)
    rows = merge_reps(all_rows)
    gemm = {key: statistics.median(g[key] for g in gemms if key in g)
            for key in {k for g in gemms for k in g}}
    print_report(cfg, rows, gemm, list(dict.fromkeys(dtypes + [
        r["gemms_in"] for r in rows if r["gemms_in"] in DTYPES])), reps, stream)
    return rows
