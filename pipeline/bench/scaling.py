"""`ffpipe bench scaling`: how cost grows with work. For every number of stages, layer
width and batch size of a grid, the same network (the dataset's input width, then
`stages` layers of `width`) is measured two ways:

    lockstep   every layer in one process with stages x threads_per_stage threads (time-
               bounded train steps, `bench.roofline.lockstep_measurement`)
    pipelined  the real `ffpipe train` in a subprocess: the sink's steady samples/s and
               every process's peak RSS (processes.jsonl)

and printed as one markdown table: samples/s, GFLOP/s (the counted GEMM FLOPs,
`bench.gemm`), peak RSS per stage, and pipelined / lockstep (taken within each
repetition, median over repetitions). The default grid is the full one (48 networks, an
hour or more on 2 cores); `--stages 1 --widths 64 --batches 25` is a smoke test.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from pipeline.bench.gemm import step_gemm_flops
from pipeline.bench.launched import launch, sized_for_steps
from pipeline.bench.roofline import lockstep_measurement
from pipeline.config import RunConfig, from_dict, to_dict

COLUMNS = ("stages", "width", "batch", "lockstep samples/s", "lockstep GFLOP/s",
           "pipelined samples/s", "pipelined GFLOP/s", "pipelined / lockstep",
           "peak RSS MiB per stage", "lockstep peak RSS MiB")


def network(cfg: RunConfig, input_dim: int, stages: int, width: int, batch: int) -> RunConfig:
    """cfg with `stages` layers of `width` at `batch`; what depends on the number of
    layers follows (per-layer thresholds dropped, goodness inference over at least the
    last layer, stage devices as the first one)."""
    d = to_dict(cfg)
    m = d["model"]
    m.update(layers=[input_dim] + [width] * stages, threshold=[],
             skip_layers=min(m["skip_layers"], stages - 1), head=m["head"] and stages >= 2)
    d["train"]["batch_size"] = batch
    devices = d["pipeline"]["devices"]
    d["pipeline"]["devices"] = devices[:1] * stages if devices else []
    return from_dict(d)


def measure_cell(cfg: RunConfig, n_train: int, steps: int, seconds: float,
                 folder: Path) -> dict:
    """One repetition of one network: lockstep, then the pipelined run."""
    B, K = cfg.train.batch_size, cfg.n_layers
    flops = sum(step_gemm_flops(B, cfg.model.layers[k], cfg.model.layers[k + 1])
                for k in range(K)) / B  # per sample
    p = cfg.train.precision
    got = lockstep_measurement(cfg, [p], [], seconds, gemm_only=False)
    lock = B / got["steps"][p]["step_s"]
    run = launch(sized_for_steps(cfg, n_train, steps), folder)
    pipe = run.summary["steady_samples_per_second"]
    return {"lockstep": lock, "pipelined": pipe, "ratio": pipe / lock, "flops": flops,
            "rss": [run.process("stage", k).get("peak_rss_mb") for k in range(K)],
            "lockstep_rss": got.get("peak_rss_mb")}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def row_of(cfg: RunConfig, stages: int, width: int, batch: int, reps: list[dict]) -> dict:
    lock, pipe = _median(r["lockstep"] for r in reps), _median(r["pipelined"] for r in reps)
    flops = reps[0]["flops"]
    rss = [_median(r["rss"][k] for r in reps) for k in range(stages)]
    return {"stages": stages, "width": width, "batch": batch,
            "lockstep samples/s": lock, "lockstep GFLOP/s": lock * flops / 1e9,
            "pipelined samples/s": pipe,
            "pipelined GFLOP/s": None if pipe is None else pipe * flops / 1e9,
            "pipelined / lockstep": _median(r["ratio"] for r in reps if r["ratio"]),
            "peak RSS MiB per stage": " / ".join("-" if v is None else f"{v:.0f}" for v in rss),
            "lockstep peak RSS MiB": _median(r["lockstep_rss"] for r in reps)}


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.0f}"
    return str(v)


def print_table(rows: list[dict], stream) -> None:
    print("| " + " | ".join(COLUMNS) + " |", file=stream)
    print("|" + "---|" * len(COLUMNS), file=stream)
    for r in rows:
        print("| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |", file=stream)
    stream.flush()


def run_scaling_bench(cfg: RunConfig, input_dim: int, n_train: int, stages: list[int],
                      widths: list[int], batches: list[int], steps: int, reps: int,
                      seconds: float, stream=sys.stdout) -> list[dict]:
    grid = [(s, w, b) for s in stages for w in widths for b in batches]
    print(f"scaling bench: {len(grid)} networks (input {input_dim}, stages {stages}, "
          f"widths {widths}, batches {batches}), {cfg.pipeline.threads_per_stage} "
          f"thread(s) per stage, precision {cfg.train.precision}, {reps} rep(s), "
          f"pipelined runs of >= {steps} steps", file=stream, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ffbench") as tmp:
        for i, (s, w, b) in enumerate(grid):
            net = network(cfg, input_dim, s, w, b)
            got = [measure_cell(net, n_train, steps, seconds,
                                Path(tmp) / f"s{s}-w{w}-b{b}-rep{rep}") for rep in range(reps)]
            rows.append(row_of(net, s, w, b, got))
            r = rows[-1]
            print(f"  {i + 1}/{len(grid)}: {s} stage(s), width {w}, batch {b}: lockstep "
                  f"{_cell(r['lockstep samples/s'])}, pipelined "
                  f"{_cell(r['pipelined samples/s'])} samples/s", file=stream, flush=True)
    print("", file=stream)
    print_table(rows, stream)
    return rows
