"""Does pipelining pay? Throughput of `pipelined` vs `lockstep` on the same cores.

Four measurements, each repeated and reported as a median, all in one run:

    stage alone   the real StageWorker, fed pre-made messages from memory (no transport,
                  no peers), in a fresh process with `threads_per_stage` threads:
                  the most one stage can do. The slowest stage bounds the pipeline.
    together      every stage-alone worker at once, each in its own process, for the same
                  seconds (no messages between them): what the cores give K busy stages
                  at the same time (shared caches, memory bandwidth, the host's scheduler).
    lockstep      every layer in one process with K * threads_per_stage threads (the
                  same total cores), train steps only.
    pipelined     the real local launcher (source, K stages, sink), probes off; the
                  steady rate at the sink (between the 10 % and 90 % marks of the train
                  stream), so process start-up, pipeline fill and drain and the final
                  evaluation are not counted.

    efficiency = pipelined samples/s / slowest stage-alone samples/s
    efficiency vs together = pipelined samples/s / slowest stage when all run together
                 (the part of the loss the runtime, not the hardware, is answerable for)

Every ratio is taken within one repetition (numbers measured close together in time) and
the median over repetitions is reported: this VM's speed drifts by 10-20 % over minutes,
which a ratio of medians taken from different minutes would mix into the result. Odd
repetitions run the measurements in reverse order.

The drift benchmark runs the stage-alone measurement with probes at the configured
interval and with probes off, alternating, and reports the overhead.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch

from pipeline.config import RunConfig, from_dict, to_dict
from pipeline.ff import normalize
from pipeline.fork_server import context as child_context
from pipeline.layer_trainer import LayerTrainer
from pipeline.processes.local import train_local
from pipeline.processes.supervise import SpawnedChild, collect, shutdown
from pipeline.runtime.flow import Flow, Stopped
from pipeline.runtime.roles import setup_process
from pipeline.runtime.stage import StageWorker
from pipeline.transport.memory import MemoryChannel
from pipeline.wire import Message, ctrl


def stage_messages(cfg: RunConfig, k: int, steps: int, probe_every: int) -> list[Message]:
    """What stage k would receive: normalized random activations of the right width."""
    gen = torch.Generator().manual_seed(k)
    B, d = cfg.train.batch_size, cfg.model.layers[k]
    norm = cfg.model.normalization
    probe = normalize(torch.rand(cfg.drift.probe_size, d, generator=gen), norm)
    msgs = []
    for step in range(steps):
        if probe_every and step % probe_every == 0:
            # upstream moves a little between probes, so drift is non-zero work
            jitter = 0.01 * step / steps * torch.randn(probe.shape, generator=gen)
            msgs.append(Message("probe", versions=[step] * k, meta={"step": step},
                                tensors={"x": normalize(probe + jitter, norm)}))
        pos = normalize(torch.rand(B, d, generator=gen), norm)
        neg = normalize(torch.rand(B, d, generator=gen), norm)
        msgs.append(Message("train", versions=[step] * k,
                            meta={"step": step, "total": steps, "n": B},
                            tensors={"pos": pos, "neg": neg}))
    msgs.append(ctrl("stop"))
    return msgs


class CyclingChannel(MemoryChannel):
    """Hands out the same messages round and round: a measurement bounded by time."""

    def recv(self, timeout=None):
        msg = self.q[0]
        self.q.rotate(-1)
        return msg


def _warm_worker(cfg_dict: dict, k: int, tmp: str, probe_every: int = 0):
    cfg = from_dict(cfg_dict)
    cfg.out = tmp  # the worker's log and checkpoint: not the user's run folders
    setup_process(cfg.pipeline.threads_per_stage)
    cfg.drift.probe_every = probe_every
    worker = StageWorker(k, cfg, Flow(MemoryChannel(stage_messages(cfg, k, 5, 0)),
                                      MemoryChannel(), lambda: False))
    worker.run()  # warm-up: first-call costs (allocator, optimizer state) not counted
    worker.samples = 0
    return cfg, worker


def _stage_alone(cfg_dict: dict, k: int, steps: int, probe_every: int, out_q) -> None:
    with tempfile.TemporaryDirectory(prefix="ffbench") as tmp:
        cfg, worker = _warm_worker(cfg_dict, k, tmp, probe_every)
        worker.flow = Flow(MemoryChannel(stage_messages(cfg, k, steps, probe_every)),
                           MemoryChannel(), lambda: False)
        t0 = time.perf_counter()
        worker.run()
        out_q.put(worker.samples / (time.perf_counter() - t0))


def _stage_together(cfg_dict: dict, k: int, seconds: float, barrier, out_q) -> None:
    with tempfile.TemporaryDirectory(prefix="ffbench") as tmp:
        cfg, worker = _warm_worker(cfg_dict, k, tmp)
        msgs = [m for m in stage_messages(cfg, k, 16, 0) if m.kind == "train"]
        barrier.wait()  # every stage starts (and stops) at the same moment
        t0 = time.perf_counter()
        deadline = t0 + seconds
        worker.flow = Flow(CyclingChannel(msgs), MemoryChannel(),
                           lambda: time.perf_counter() > deadline)
        try:
            worker.run()
        except Stopped:
            pass
        out_q.put((k, worker.samples / (time.perf_counter() - t0)))


def stages_together_rates(cfg: RunConfig, seconds: float) -> list[float]:
    """samples/s of every stage when all K run at once, each in its own process, fed from
    memory (no messages between them): what the cores give K busy stages together."""
    K = cfg.n_layers
    barrier = child_context().Barrier(K)
    got = in_children(_stage_together, [(to_dict(cfg), k, seconds, barrier) for k in range(K)])
    return [rate for _, rate in sorted(got)]


def in_children(target, arg_lists: list[tuple]) -> list:
    """Run `target(*args, out_queue)` for every args at once, each in a fresh process
    (started as the local launcher starts its children); return what they put, in the
    order it arrived."""
    ctx = child_context()
    q = ctx.Queue()
    children = []
    try:
        for i, args in enumerate(arg_lists):
            children.append(SpawnedChild(ctx.Process(target=target, args=(*args, q),
                                                     name=f"bench child {i}")))
        return collect(children, q, len(children), timeout=600)
    finally:
        shutdown(children, timeout=10, ask=False)


def in_child(target, *args):
    """Run `target(*args, out_queue)` in a fresh process; return what it puts."""
    return in_children(target, [args])[0]


def stage_alone_rate(cfg: RunConfig, k: int, steps: int, probe_every: int = 0) -> float:
    """samples/s of stage k alone, measured in a fresh process."""
    return in_child(_stage_alone, to_dict(cfg), k, steps, probe_every)


def _lockstep(cfg_dict: dict, steps: int, threads: int, out_q) -> None:
    cfg = from_dict(cfg_dict)
    setup_process(threads)
    trainers = [LayerTrainer(k, cfg) for k in range(cfg.n_layers)]
    gen = torch.Generator().manual_seed(0)
    B, d = cfg.train.batch_size, cfg.model.layers[0]
    batches = [(torch.rand(B, d, generator=gen), torch.rand(B, d, generator=gen))
               for _ in range(8)]
    t0 = None
    for step in range(steps + 5):
        if step == 5:
            t0 = time.perf_counter()
        pos, neg = batches[step % len(batches)]
        for tr in trainers:
            pos, neg, _ = tr.train_step(pos, neg, step / (steps + 5))
    out_q.put(steps * B / (time.perf_counter() - t0))


def lockstep_rate(cfg: RunConfig, steps: int, threads: int) -> float:
    return in_child(_lockstep, to_dict(cfg), steps, threads)


def pipelined_rate(cfg: RunConfig, ds, out_dir: str) -> float:
    cfg = from_dict(to_dict(cfg))
    cfg.out, cfg.drift.probe_every, cfg.train.eval_every = out_dir, 0, 0
    cfg.data.test_limit = cfg.pipeline.eval_batch  # one eval message: not what we measure
    summary = train_local(cfg, replace(ds, x_test=ds.x_test[:cfg.pipeline.eval_batch],
                                           y_test=ds.y_test[:cfg.pipeline.eval_batch]))
    return summary["steady_samples_per_second"]


RATIOS = ("efficiency", "efficiency_vs_together", "together_over_alone",
          "pipelined_over_lockstep")


def _measure_rep(cfg: RunConfig, ds, steps: int, out_dir: str, reverse: bool) -> dict:
    """One repetition of every measurement; `reverse` runs all but the first in reverse
    order, so a machine that speeds up or slows down during the run favours neither side."""
    K = cfg.n_layers
    got: dict[str, float] = {}

    def alone():
        for k in range(K):
            got[f"stage{k}"] = stage_alone_rate(cfg, k, steps)

    def together():
        seconds = steps * cfg.train.batch_size / min(got[f"stage{k}"] for k in range(K))
        for k, rate in enumerate(stages_together_rates(cfg, seconds)):
            got[f"stage{k}_together"] = rate

    def lockstep():
        got["lockstep"] = lockstep_rate(cfg, steps, K * cfg.pipeline.threads_per_stage)

    def pipelined():
        got["pipelined"] = pipelined_rate(cfg, ds, out_dir)

    # alone always comes first: together runs for as long as the slowest stage took alone
    rest = [together, lockstep, pipelined]
    for step in [alone] + (rest[::-1] if reverse else rest):
        step()
    return got


def run_pipeline_bench(cfg: RunConfig, ds, steps: int, reps: int = 3,
                       stream=sys.stdout) -> dict:
    K = cfg.n_layers
    tps = cfg.pipeline.threads_per_stage
    cfg.train.epochs = max(1, round(steps * cfg.train.batch_size / len(ds.x_train)))
    print(f"pipeline bench: {K} stages x {tps} thread(s), batch {cfg.train.batch_size}, "
          f"layers {cfg.model.layers}, {reps} reps", file=stream, flush=True)
    per_rep = []
    with tempfile.TemporaryDirectory(prefix="ffbench") as tmp:
        for rep in range(reps):
            got = _measure_rep(cfg, ds, steps, f"{tmp}/run{rep}", reverse=rep % 2 == 1)
            slowest = min(got[f"stage{k}"] for k in range(K))
            together = min(got[f"stage{k}_together"] for k in range(K))
            got.update(efficiency=got["pipelined"] / slowest,
                       efficiency_vs_together=got["pipelined"] / together,
                       together_over_alone=together / slowest,
                       pipelined_over_lockstep=got["pipelined"] / got["lockstep"])
            per_rep.append(got)
            print(f"  rep {rep + 1}: " + ", ".join(
                f"{n} {v:.3f}" if n in RATIOS else f"{n} {v:.0f}" for n, v in got.items()),
                file=stream, flush=True)
    med = {n: statistics.median(r[n] for r in per_rep) for n in per_rep[0]}
    rates = {n: v for n, v in med.items() if n not in RATIOS}
    result = {**{f"{n}_samples_per_s": v for n, v in rates.items()},
              **{n: med[n] for n in RATIOS},
              "slowest_stage_samples_per_s": min(med[f"stage{k}"] for k in range(K))}
    print("median samples/s: " + ", ".join(f"{n} {v:.0f}" for n, v in rates.items()),
          file=stream)
    print("medians of the per-rep ratios (each rep's numbers were measured minutes apart "
          "at most):", file=stream)
    print(f"  pipeline efficiency (pipelined / slowest stage alone): "
          f"{result['efficiency']:.3f}", file=stream)
    print(f"  all stages busy at once, no messages (slowest / its alone rate): "
          f"{result['together_over_alone']:.3f}; pipelined / that: "
          f"{result['efficiency_vs_together']:.3f}", file=stream)
    print(f"  pipelined / lockstep on {K * tps} cores: "
          f"{result['pipelined_over_lockstep']:.3f}", file=stream, flush=True)
    return result


def run_drift_bench(cfg: RunConfig, steps: int, reps: int = 5, stage: int | None = None,
                    stream=sys.stdout) -> dict:
    """Stage throughput with drift monitoring at the configured probe interval vs off,
    on stage 1 by default (the first whose input drifts), stage 0 for one layer."""
    every = cfg.drift.probe_every
    stage = min(1, cfg.n_layers - 1) if stage is None else stage
    on, off = [], []
    for rep in range(reps):  # alternate, so slow drifts of the machine hit both alike
        off.append(stage_alone_rate(cfg, stage, steps, probe_every=0))
        on.append(stage_alone_rate(cfg, stage, steps, probe_every=every))
        print(f"  rep {rep + 1}: probes off {off[-1]:.0f}, probes every {every} steps "
              f"{on[-1]:.0f} samples/s", file=stream, flush=True)
    m_on, m_off = statistics.median(on), statistics.median(off)
    overhead = 1 - m_on / m_off
    print(f"drift monitoring overhead at probe_every={every}, probe_size="
          f"{cfg.drift.probe_size}: {100 * overhead:.1f}% of stage {stage} throughput "
          f"(median {m_on:.0f} vs {m_off:.0f} samples/s)", file=stream, flush=True)
    return {"probes_on_samples_per_s": m_on, "probes_off_samples_per_s": m_off,
            "overhead": overhead}
