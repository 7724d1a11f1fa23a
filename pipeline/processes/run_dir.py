"""What a run needs before its first process starts: data that fits the model, and the
run folder with its resolved config.json."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import RunConfig, to_dict
from pipeline.datasets import Dataset, load_dataset
from pipeline.runlog import write_json_atomic


def load_checked_dataset(cfg: RunConfig) -> Dataset:
    ds = load_dataset(cfg.data)
    ds.check_fits(cfg.model.layers)
    return ds


def write_run_config(cfg: RunConfig) -> None:
    """config.json: the resolved config of the run (the one place it is written). A
    worker re-reading the file its launcher wrote leaves it as it is."""
    path = Path(cfg.out) / "config.json"
    resolved = to_dict(cfg)
    try:
        if json.loads(path.read_text()) == json.loads(json.dumps(resolved)):
            return
    except (OSError, ValueError):
        pass
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, resolved)
