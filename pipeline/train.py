"""`ffpipe train`: resolve the config, load the data, write config.json, run a schedule.

The pipelined schedule picks its launcher by transport: `local` (shared memory, this
process tree), `zmq` (separate worker processes over 127.0.0.1), `dist` (torchrun; when
this process already is a torchrun rank it plays that rank's role).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import RunConfig, to_dict
from pipeline.datasets import load_dataset
from pipeline.errors import ConfigError
from pipeline.runlog import write_json_atomic


def check_data_fits(cfg: RunConfig, input_dim: int, num_classes: int) -> None:
    if cfg.model.layers[0] != input_dim:
        raise ConfigError(f"model.layers: the first width must equal the data's input size "
                          f"({input_dim} for {cfg.data.dataset}), got {cfg.model.layers[0]}")
    if input_dim < num_classes:
        raise ConfigError(f"{cfg.data.dataset}: input size {input_dim} is smaller than the "
                          f"{num_classes} label positions of the overlay")


def train(cfg: RunConfig) -> dict | None:
    """Returns the summary (None on torchrun ranks other than the sink)."""
    pipelined = cfg.train.schedule == "pipelined"
    if pipelined and cfg.pipeline.transport == "dist" and "RANK" in os.environ:
        from pipeline.runtime.cluster import train_dist_rank
        return train_dist_rank(cfg)
    ds = load_dataset(cfg.data)
    check_data_fits(cfg, ds.input_dim, ds.num_classes)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(cfg.out) / "config.json", to_dict(cfg))
    if not pipelined:
        from pipeline.schedules import run_single
        return run_single(cfg, ds)
    if cfg.pipeline.transport == "zmq":
        from pipeline.runtime.cluster import train_zmq
        return train_zmq(cfg)
    if cfg.pipeline.transport == "dist":
        from pipeline.runtime.cluster import train_dist_torchrun
        return train_dist_torchrun(cfg)
    from pipeline.runtime.launcher import train_pipelined
    return train_pipelined(cfg, ds)
