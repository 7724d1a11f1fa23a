"""A real `ffpipe train` in a subprocess, timed from the moment the command starts, and
what its run folder then says: the sink's steady rate, each stage's rate and waits, and
every process's start-up moments and peak memory (processes.jsonl).

Benchmarks that want what a user gets (start-up included) run the command itself rather
than calling the launcher in their own process: a second run in one process would find
the fork server already running, with torch imported.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import RunConfig, from_dict, to_dict
from pipeline.errors import StageFailed
from pipeline.runlog import read_jsonl, read_summary
from pipeline.runtime.process_log import read_processes


@dataclass
class LaunchedRun:
    command_start: float          # time.time() just before the command started
    wall_s: float                 # the command's whole run, start to exit
    summary: dict
    processes: list[dict]         # processes.jsonl
    stage_records: list[list[dict]] = field(default_factory=list)  # train records per stage
    log_every: int = 1

    def process(self, role: str, index: int = 0) -> dict:
        for p in self.processes:
            if p["role"] == role and p["index"] == index and not p.get("restarts"):
                return p
        return {}

    def since_start(self, role: str, index: int, moment: str) -> float | None:
        """Seconds from the command's start to `moment` of that process."""
        t = self.process(role, index).get(moment)
        return None if t is None else t - self.command_start

    def first_batch(self) -> dict:
        """Seconds from the command's start to the first step of every stage and to the
        first train message at the sink; and from the launch (children started) too."""
        K = len(self.stage_records)
        out = {f"stage{k}_first_step_s": self.since_start("stage", k, "first_train_out")
               for k in range(K)}
        out["sink_first_train_s"] = self.since_start("sink", 0, "first_train_in")
        launch = self.process("sink").get("launch")
        if launch is not None and out["sink_first_train_s"] is not None:
            out["launch_s"] = launch - self.command_start
        return out

    def stage_busy(self, k: int) -> dict:
        """Stage k between its first and last train record: samples/s, and samples/s
        while busy (the time it waited for input or for room downstream left out)."""
        # whole log intervals only: the record a stop writes covers a part interval and
        # the final evaluation
        recs = [r for r in self.stage_records[k] if r["step"] % self.log_every == 0]
        if len(recs) < 3:  # the first interval holds the wait for the first message
            return {}
        first, last = recs[0], recs[-1]
        samples = last["samples"] - first["samples"]
        seconds = last["time"] - first["time"]
        waits = sum(r["wait_recv_s"] + r["wait_send_s"] for r in recs[1:])
        return {"samples_per_s": samples / max(seconds, 1e-9),
                "busy_samples_per_s": samples / max(seconds - waits, 1e-9),
                "busy_fraction": max(seconds - waits, 0.0) / max(seconds, 1e-9)}


def sized_for_steps(cfg: RunConfig, n_train: int, steps: int) -> RunConfig:
    """A copy of cfg that trains at least `steps` steps (whole epochs), without probes or
    evaluations on the way, whose final evaluation is a single message, and whose stages
    log at least ~10 records (a stage's rate is read from them)."""
    cfg = from_dict(to_dict(cfg))
    cfg.train.epochs = max(1, math.ceil(steps * cfg.train.batch_size / n_train))
    total = cfg.train.epochs * math.ceil(n_train / cfg.train.batch_size)
    cfg.train.log_every = max(1, min(cfg.train.log_every, total // 10))
    cfg.drift.probe_every, cfg.train.eval_every = 0, 0
    cfg.data.test_limit = cfg.pipeline.eval_batch
    return cfg


def launch(cfg: RunConfig, folder: Path, timeout: float = 3600) -> LaunchedRun:
    """Run `ffpipe train` on cfg with its run folder in `folder` (fresh)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path, out = folder / "bench-config.json", folder / "run"
    cfg_path.write_text(json.dumps(to_dict(cfg)))
    cmd = [sys.executable, "-P", "-m", "pipeline", "train", "--config", str(cfg_path),
           "--out", str(out)]
    with open(folder / "output.log", "w") as log:
        t0 = time.time()
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.time() - t0
    if rc != 0:
        tail = (folder / "output.log").read_text()[-2000:]
        raise StageFailed(f"bench run in {out} failed ({rc}):\n{tail}")
    records = [[r for r in read_jsonl(out / f"stage{k}.jsonl") if r.get("kind") == "train"]
               for k in range(cfg.n_layers)]
    return LaunchedRun(t0, wall, read_summary(out), read_processes(out), records,
                       cfg.train.log_every)


def median_of(dicts: list[dict]) -> dict:
    """Per key, the median over the dicts that have a number there."""
    keys = {k for d in dicts for k, v in d.items() if isinstance(v, (int, float))}
    return {k: statistics.median(d[k] for d in dicts if isinstance(d.get(k), (int, float)))
            for k in sorted(keys)}
