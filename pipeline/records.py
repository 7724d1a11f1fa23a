"""The records every schedule writes, in one place: the per-stage and sink log files (and
their TensorBoard mirror), the train record's keys, running loss/goodness means, and the
summary fields every run shares.

The pipelined stages (`runtime.stage`) and the single-process schedules (`recorder`)
both build their train records with `train_record`, so `ffpipe drift` and `ffpipe
compare` read every schedule alike.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import precision
from pipeline.config import RunConfig
from pipeline.dataset_info import resolve_augment
from pipeline.provenance import provenance
from pipeline.runlog import JsonlWriter
from pipeline.tensorboard_mirror import TensorBoardMirror


def run_provenance(out: Path) -> dict:
    """The provenance config.json recorded when the run started (this process's own
    where the run folder has no config.json, e.g. a sink on another host)."""
    try:
        return json.loads((out / "config.json").read_text())["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        return provenance()


def base_summary(cfg: RunConfig) -> dict:
    return {"schedule": cfg.train.schedule, "dataset": cfg.data.dataset,
            "layers": cfg.model.layers, "normalization": cfg.model.normalization,
            "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
            "seed": cfg.train.seed, "loss": cfg.train.loss,
            "augment": resolve_augment(cfg.data.augment, cfg.data.dataset),
            # What `auto` became on the device of the single-process schedules / stage 0.
            "precision": precision.of_run(cfg),
            "wire_dtype": cfg.pipeline.wire_dtype,
            "provenance": run_provenance(Path(cfg.out))}


def train_record(*, stage: int, step: int, source_step: int, time: float, samples: int,
                 samples_per_s: float, means: dict, staleness: list, lr: float | None,
                 queue_depth: int = 0, drops: int = 0, stale_drops: int = 0,
                 rejected: int = 0, gaps: int = 0, wait_recv_s: float = 0.0,
                 wait_send_s: float = 0.0) -> dict:
    """One `train` line of stage{k}.jsonl. Single-process schedules have no queue,
    drops or staleness: they pass the defaults (zeros)."""
    return {"kind": "train", "stage": stage, "step": step, "source_step": source_step,
            "time": time, "samples": samples, "samples_per_s": samples_per_s, **means,
            "queue_depth": queue_depth, "drops": drops, "stale_drops": stale_drops,
            "rejected": rejected, "gaps": gaps, "staleness": staleness,
            "wait_recv_s": wait_recv_s, "wait_send_s": wait_send_s, "lr": lr}


class RecordLog:
    """One JSONL file of records, mirrored to TensorBoard when log.tensorboard is on."""

    def __init__(self, cfg: RunConfig, name: str, append: bool = False):
        out = Path(cfg.out)
        self.jsonl = JsonlWriter(out / f"{name}.jsonl", append=append)
        self.tb = TensorBoardMirror(out / "tensorboard" / name, name) \
            if cfg.log.tensorboard else None

    def write(self, record: dict) -> None:
        self.jsonl.write(record)
        if self.tb is not None:
            self.tb.write(record)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


class StageLog(RecordLog):
    """stage{k}.jsonl: a stage's train and drift records."""

    def __init__(self, cfg: RunConfig, k: int, append: bool = False):
        super().__init__(cfg, f"stage{k}", append)
        self.k = k


class SinkLog(RecordLog):
    """sink.jsonl: accuracy over training ("kind": "eval" records), written by the
    pipeline's sink and by the single-process schedules alike."""

    def __init__(self, cfg: RunConfig, append: bool = False):
        super().__init__(cfg, "sink", append)


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
