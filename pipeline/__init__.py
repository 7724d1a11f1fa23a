"""ff-pipeline: Forward-Forward and layer-local learning as a pipeline of processes.

The Python API (README, "Python API"):

    from pipeline import load_config, train
    cfg = load_config(overrides={"train.epochs": 5, "train.schedule": "lockstep"})
    summary = train(cfg)          # dict: test_accuracy, wall_seconds, drift, ...

`load_config(path, overrides)` builds a `RunConfig` exactly as `ffpipe train` does (the
same keys, the dataset's defaults, validation); a `RunConfig` built in code is validated
by `train` before anything starts, and a bad value raises one `ConfigError` naming the
field. `evaluate(run_dir, ...)` and `load_run(run_dir)` use a finished run's model.
Everything else in the package is internal: its modules may change between versions.
"""

from importlib.metadata import PackageNotFoundError, version

from pipeline.config import (DataConfig, DriftConfig, ModelConfig, NetConfig, PipelineConfig,
                             RunConfig, TrainConfig, load_config)
from pipeline.errors import ConfigError, DataError, StageFailed, UserError

try:
    __version__ = version("ff-pipeline")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["train", "evaluate", "load_run", "load_config", "RunConfig", "DataConfig",
           "ModelConfig", "TrainConfig", "PipelineConfig", "DriftConfig", "NetConfig",
           "UserError", "ConfigError", "DataError", "StageFailed", "__version__"]

# Names that pull in torch (and every transport): imported on first use, so that
# `import pipeline.config` (the CLI's option parsing, the launch scripts) stays light.
_LAZY = {"train": "pipeline.processes", "evaluate": "pipeline.model_file",
         "load_run": "pipeline.model_file"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
