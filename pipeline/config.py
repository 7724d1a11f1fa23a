"""Typed run configuration: defaults, TOML loading, command-line overrides, validation.

Every field carries its help text and its allowed values in `metadata`, so the one
dataclass below is the single place a default or a rule lives. `load_config` builds a
`RunConfig` from (defaults <- the dataset's defaults <- TOML file <- overrides) and
validates it once; any bad value raises `ConfigError` naming the field and what is allowed
(and the closest key or value when one is misspelt).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.dataset_info import DATASET_DEFAULTS, DATASET_INPUT
from pipeline.errors import ConfigError, did_you_mean

from pipeline.config_sections import (SCHEDULES, DataConfig, DriftConfig,  # noqa: F401
                                      LogConfig, ModelConfig, NetConfig, PipelineConfig,
                                      TrainConfig, opt)


@dataclass(kw_only=True, slots=True)
class RunConfig:
    out: str = opt("", "run folder: config, logs, summary, checkpoints (default: a new "
                       "runs/<UTC date-time>, e.g. runs/20261201-233000)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    log: LogConfig = field(default_factory=LogConfig)
    net: NetConfig = field(default_factory=NetConfig)

    @property
    def n_layers(self) -> int:
        """FF layers (= pipeline stages): one fewer than the widths."""
        return len(self.model.layers) - 1

    def thresholds(self) -> list[float]:
        if self.model.threshold:
            return list(self.model.threshold)
        scale = self.model.threshold_scale
        widths = self.model.layers[1:]
        return [scale * (w if self.model.goodness == "sum" else 1.0) for w in widths]


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name != "out"}

# Keys of a run's config.json that describe the run rather than configure it.
RECORD_ONLY_KEYS = ("provenance",)
_type_hints = functools.cache(typing.get_type_hints)  # per section class: validate asks often


def _field_of(obj, dotted: str):
    """Return (owner object, dataclass field) for a dotted key like 'train.epochs'."""
    parts = dotted.replace("-", "_").split(".")
    owner = obj
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(owner) or part not in SECTIONS:
            raise ConfigError(f"unknown config section '{part}' in '{dotted}'"
                              f"{did_you_mean(part, SECTIONS)}; sections: "
                              f"{', '.join(SECTIONS)}")
        owner = getattr(owner, part)
    fields = {f.name: f for f in dataclasses.fields(owner)}
    name = parts[-1]
    if name not in fields or dataclasses.is_dataclass(getattr(owner, name)):
        homes = [s for s in SECTIONS if len(parts) == 1 and
                 name in {f.name for f in dataclasses.fields(getattr(obj, s))}]
        if homes:  # `epochs = 2` at the top of a TOML file
            raise ConfigError(f"'{dotted}' belongs in [{homes[0]}]: write it under "
                              f"[{homes[0]}] in a TOML file, or --{homes[0]}.{name} VALUE")
        keys = [k for k, _, _ in iter_fields(obj)]
        raise ConfigError(f"unknown config key '{dotted}'"
                          f"{did_you_mean(dotted.replace('-', '_'), keys)}; "
                          f"`ffpipe train --help` lists every key")
    return owner, fields[name]


def _coerce(value, tp, key: str):
    """Convert a TOML or command-line value to the field's declared type."""
    origin = typing.get_origin(tp)
    try:
        if origin is list:
            (inner,) = typing.get_args(tp)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [_coerce(v, inner, key) for v in value]
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if tp is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, bool):  # `resume = true` in TOML
                return "true" if value else "false"
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (ValueError, TypeError):
        pass
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{key}: expected {name}, got {value!r}")


# Keys that moved: the old name still works, says once per use where the key lives now.
RENAMED_KEYS = {"drift.tensorboard": "log.tensorboard"}


def _current_key(dotted: str) -> str:
    new = RENAMED_KEYS.get(dotted.replace("-", "_"))
    if new is None:
        return dotted
    logging.getLogger(__name__).warning("%s is deprecated: it now sets %s (use --%s)",
                                        dotted, new, new)
    return new


def set_value(cfg: RunConfig, dotted: str, value) -> str:
    """Set one key (converted to its declared type); returns the key as it is spelt in
    the config ('train.batch_size' for 'train.batch-size')."""
    dotted = _current_key(dotted)
    owner, f = _field_of(cfg, dotted)
    hints = _type_hints(type(owner))
    setattr(owner, f.name, _coerce(value, hints[f.name], dotted))
    return dotted.replace("-", "_")


def _apply_table(cfg: RunConfig, table: dict, prefix: str = "", given: set | None = None):
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            if prefix or key not in SECTIONS:
                raise ConfigError(f"unknown config section [{dotted}]"
                                  f"{did_you_mean(key, SECTIONS)}; sections: "
                                  f"{', '.join(SECTIONS)}")
            _apply_table(cfg, value, f"{key}.", given)
        else:
            key = set_value(cfg, dotted, value)
            if given is not None:
                given.add(key)


def apply_dataset_defaults(cfg: RunConfig, given: set) -> None:
    """DATASET_INPUT and DATASET_DEFAULTS for every key not in `given`."""
    name = cfg.data.dataset
    if "model.layers" not in given and name in DATASET_INPUT:
        cfg.model.layers = [DATASET_INPUT[name]] + cfg.model.layers[1:]
    for key, value in DATASET_DEFAULTS.get(name, {}).items():
        if key not in given:
            set_value(cfg, key, value)


def _check_field(key: str, value, meta: dict) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if meta.get("choices") and item not in meta["choices"]:
            raise ConfigError(f"{key}: {item!r} is not allowed"
                              f"{did_you_mean(str(item), meta['choices'])}; "
                              f"choose one of {', '.join(meta['choices'])}")
        if meta.get("lo") is not None and item < meta["lo"]:
            raise ConfigError(f"{key}: must be >= {meta['lo']}, got {item!r}")
        if meta.get("hi") is not None and item > meta["hi"]:
            raise ConfigError(f"{key}: must be <= {meta['hi']}, got {item!r}")


def step_graph_unsupported(train_cfg) -> str | None:
    """Why a run's layers cannot step through a graph (`pipeline.step_graph`; None: they
    can): float16's loss scale is a host decision, dropout masks come from a per-layer
    generator a graph would freeze, and only Adam reads its learning rate on the device."""
    if train_cfg.precision == "fp16":
        return "float16 (its loss scale is decided on the host)"
    if train_cfg.dropout > 0:
        return "dropout (its masks come from a generator a graph would freeze)"
    if train_cfg.optimizer != "adam":
        return f"{train_cfg.optimizer} (only Adam reads its learning rate on the device)"
    return None


def validate(cfg: RunConfig) -> RunConfig:
    """Convert every field as the command line would (a config built in code: `lr=1` is
    1.0, `lr="fast"` an error), check its own rule, then the rules that tie fields together."""
    for key, value, _ in list(iter_fields(cfg)):
        set_value(cfg, key, value)
    for key, value, meta in iter_fields(cfg):
        _check_field(key, value, meta)
    m, t, p = cfg.model, cfg.train, cfg.pipeline
    if len(m.layers) < 2:
        raise ConfigError("model.layers: need the input width and at least one layer, "
                          "e.g. 784,1000,1000")
    n_layers = cfg.n_layers
    if m.threshold and len(m.threshold) != n_layers:
        raise ConfigError(f"model.threshold: give one value per layer ({n_layers}), "
                          f"got {len(m.threshold)}")
    if m.skip_layers >= n_layers:
        raise ConfigError(f"model.skip_layers: must be < the number of layers ({n_layers}), "
                          f"got {m.skip_layers}")
    if m.head and n_layers < 2:
        raise ConfigError("model.head: needs at least 2 layers (it reads layers 1..)")
    if p.devices and len(p.devices) != n_layers:
        raise ConfigError(f"pipeline.devices: give one device per layer ({n_layers}), "
                          f"got {len(p.devices)}")
    for dev in p.devices + [t.device]:
        if not (dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and
                                                    dev[5:].isdigit())):
            raise ConfigError(f"{'pipeline.devices' if dev in p.devices else 'train.device'}: "
                              f"device {dev!r} is not valid; use cpu, cuda or cuda:N")
    if t.step_graph == "on" and t.schedule != "backprop":
        why = step_graph_unsupported(t)
        if why:
            raise ConfigError(f"train.step_graph: 'on' does not work with {why}; use auto or off")
    if not cfg.out:  # a fresh folder per run, as Hydra does: runs never mix by default
        cfg.out = time.strftime("runs/%Y%m%d-%H%M%S", time.gmtime())
    aug = cfg.data.augment
    shift = aug.startswith("shift:") and aug[6:].isdigit() and int(aug[6:]) > 0
    if aug not in ("none", "auto") and not shift:
        raise ConfigError(f"data.augment: {aug!r} is not allowed; use auto, none or shift:N "
                          f"with N >= 1 pixels, e.g. shift:2")
    if m.label_strength == 0:
        raise ConfigError("model.label_strength: must be > 0 (the label is the signal)")
    if m.threshold_scale == 0 and not m.threshold:
        raise ConfigError("model.threshold_scale: must be > 0 (theta 0 calls every activity "
                          "positive); e.g. 0.5")
    return cfg


def iter_fields(obj, prefix: str = ""):
    """Yield (dotted key, value, metadata) for every leaf field of a config."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f.metadata


def load_config(path: str | None = None, overrides=()) -> RunConfig:
    """Defaults <- the dataset's defaults <- TOML (or a run's config.json) <- overrides
    (`(key, value)` pairs or a dict), validated. The dataset's defaults (DATASET_INPUT,
    DATASET_DEFAULTS) fill only keys that neither the file nor the overrides set."""
    table = {}
    if path:
        try:
            text = Path(path).read_text()
            # A run's config.json reproduces that run; anything else is TOML.
            table = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
        except OSError:
            raise ConfigError(f"config file {path} not found; check the --config path") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid "
                              f"{'JSON' if str(path).endswith('.json') else 'TOML'}: "
                              f"{str(exc).splitlines()[0]}") from None
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: expected a table of sections")
    return from_dict(table, overrides)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, overrides=()) -> RunConfig:
    """Rebuild a config from `to_dict` output (e.g. a run's config.json), or any table of
    sections, then the overrides; see `load_config`."""
    cfg, given = RunConfig(), set()
    _apply_table(cfg, {k: v for k, v in d.items() if k not in RECORD_ONLY_KEYS}, given=given)
    for key, value in (overrides.items() if isinstance(overrides, dict) else overrides):
        given.add(set_value(cfg, key, value))
    apply_dataset_defaults(cfg, given)
    return validate(cfg)
