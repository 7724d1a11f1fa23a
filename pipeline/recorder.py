"""What the single-process schedules write while they train: stage{k}.jsonl per layer
(train and drift records), sink.jsonl (accuracy over time) and summary.json.

The pipelined runtime writes the same files from its own processes, with the same record
keys, so `ffpipe drift` and `ffpipe compare` read every schedule alike.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.drift import DriftMonitor
from pipeline.runlog import JsonlWriter, write_json_atomic


def base_summary(cfg: RunConfig) -> dict:
    return {"schedule": cfg.train.schedule, "dataset": cfg.data.dataset,
            "layers": cfg.model.layers, "normalization": cfg.model.normalization,
            "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
            "seed": cfg.train.seed}


class StageLog:
    """stage{k}.jsonl, mirrored to TensorBoard when drift.tensorboard is on."""

    def __init__(self, cfg: RunConfig, k: int, append: bool = False):
        self.k = k
        self.jsonl = JsonlWriter(Path(cfg.out) / f"stage{k}.jsonl", append=append)
        self.tb = None
        if cfg.drift.tensorboard:
            from pipeline.drift.tensorboard import TensorBoardMirror
            self.tb = TensorBoardMirror(Path(cfg.out) / "tensorboard" / f"stage{k}")

    def write(self, record: dict) -> None:
        self.jsonl.write(record)
        if self.tb is not None:
            self.tb.write(record, self.k)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


class LayerStats:
    """Running means of a layer's loss and goodness between two log records."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n, self.sums = 0, {"loss": 0.0, "g_pos": 0.0, "g_neg": 0.0}

    def add(self, stats: dict) -> None:
        self.n += 1
        for k in self.sums:
            self.sums[k] += stats[k]

    def means(self) -> dict:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


class Recorder:
    def __init__(self, cfg: RunConfig, n_layers: int):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.t0 = time.monotonic()
        self.stage_logs = [StageLog(cfg, k) for k in range(n_layers)]
        self.sink_log = JsonlWriter(self.out / "sink.jsonl")
        self.monitors = [DriftMonitor(k, cfg.drift) for k in range(n_layers)]
        self.stats = [LayerStats() for _ in range(n_layers)]
        self._last = [(self.t0, 0)] * n_layers

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, k: int, stats: dict) -> None:
        self.stats[k].add(stats)

    def log_layer(self, k: int, step: int, samples: int, **extra) -> None:
        t, s = time.monotonic(), samples
        t_prev, s_prev = self._last[k]
        self._last[k] = (t, s)
        rec = {"kind": "train", "stage": k, "step": step, "source_step": step,
               "time": self.now(), "samples": samples,
               "samples_per_s": (s - s_prev) / max(t - t_prev, 1e-9),
               **self.stats[k].means(), "queue_depth": 0, "drops": 0,
               "staleness": [0] * k, "wait_recv_s": 0.0, "wait_send_s": 0.0, **extra}
        self.stats[k].reset()
        self.stage_logs[k].write(rec)

    def observe(self, k: int, x, step: int) -> dict:
        rec = self.monitors[k].observe(x, step, source_step=step, time=self.now(),
                                       staleness=[0] * k)
        self.stage_logs[k].write(rec)
        return rec

    def log_eval(self, step: int, samples: int, metrics: dict, final: bool = False) -> None:
        self.sink_log.write({"kind": "eval", "step": step, "time": self.now(),
                             "samples": samples, "final": final, **metrics})

    def finish(self, summary: dict) -> dict:
        summary = {**base_summary(self.cfg), **summary,
                   "drift": [m.summary() for m in self.monitors]}
        for w in self.stage_logs + [self.sink_log]:
            w.close()
        write_json_atomic(self.out / "summary.json", summary)
        return summary
