"""What the single-process schedules write while they train: stage{k}.jsonl per layer
(train and drift records), sink.jsonl (accuracy over time) and summary.json.

The pipelined runtime writes the same files from its own processes; the record shapes
both use are in `pipeline.records`.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.drift import DriftMonitor
from pipeline.records import LayerStats, SinkLog, StageLog, base_summary, train_record
from pipeline.runlog import write_json_atomic


class Recorder:
    def __init__(self, cfg: RunConfig, n_layers: int):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.t0 = time.monotonic()
        self.stage_logs = [StageLog(cfg, k) for k in range(n_layers)]
        self.sink_log = SinkLog(cfg)
        self.monitors = [DriftMonitor(k, cfg.drift) for k in range(n_layers)]
        self.stats = [LayerStats() for _ in range(n_layers)]
        self._last = [(self.t0, 0)] * n_layers

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, k: int, stats: dict) -> None:
        self.stats[k].add(stats)

    def log_layer(self, k: int, step: int, samples: int, lr: float | None = None) -> None:
        t, s = time.monotonic(), samples
        t_prev, s_prev = self._last[k]
        self._last[k] = (t, s)
        rec = train_record(stage=k, step=step, source_step=step, time=self.now(),
                           samples=samples, samples_per_s=(s - s_prev) / max(t - t_prev, 1e-9),
                           means=self.stats[k].means(), staleness=[0] * k, lr=lr)
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
