"""`ffpipe train`: resolve the config, load the data, write config.json, run a schedule."""

from __future__ import annotations

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


def train(cfg: RunConfig) -> dict:
    ds = load_dataset(cfg.data)
    check_data_fits(cfg, ds.input_dim, ds.num_classes)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(cfg.out) / "config.json", to_dict(cfg))
    if cfg.train.schedule == "pipelined":
        from pipeline.runtime.launcher import train_pipelined
        return train_pipelined(cfg, ds)
    from pipeline.schedules import run_single
    return run_single(cfg, ds)
