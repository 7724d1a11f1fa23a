"""ff-pipeline: Forward-Forward and layer-local learning as a pipeline of processes.

The Python API:

    from pipeline import load_config, train
    cfg = load_config(overrides=[("train.epochs", 5), ("train.schedule", "lockstep")])
    summary = train(cfg)          # dict: test_accuracy, wall_seconds, drift, ...

`RunConfig` and its sections are the typed config (`load_config` builds and validates
one from a TOML file and overrides). Everything else in the package is internal: its
modules may change between versions.
"""

from importlib.metadata import PackageNotFoundError, version

from pipeline.config import (DataConfig, DriftConfig, ModelConfig, NetConfig, PipelineConfig,
                             RunConfig, TrainConfig, load_config)
from pipeline.errors import ConfigError, DataError, StageFailed, UserError

try:
    __version__ = version("ff-pipeline")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["train", "load_config", "RunConfig", "DataConfig", "ModelConfig", "TrainConfig",
           "PipelineConfig", "DriftConfig", "NetConfig", "UserError", "ConfigError",
           "DataError", "StageFailed", "__version__"]


def __getattr__(name: str):
    # `train` pulls in torch and every transport: imported on first use, so that
    # `import pipeline.config` (the CLI's option parsing, the launch scripts) stays light.
    if name == "train":
        from pipeline.processes import train
        return train
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
