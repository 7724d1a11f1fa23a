"""Where config overrides come from: command-line options and `FFPIPE_*` variables.

Both produce `(dotted key, value)` pairs for `config.load_config`, so every entry point
(`ffpipe train`, `ffpipe worker`, compare, bench, the launch scripts) parses options the
same way and a bad one fails in one line before any process starts.

    --train.epochs=5   --train.epochs 5   --epochs 5       a key, or its short flag
    --head   --head true   --head=false   --no-head        a boolean (or --resume[=auto])
"""

from __future__ import annotations

import functools
import os

from pipeline.config import RunConfig, iter_fields, load_config
from pipeline.errors import ConfigError, did_you_mean

# Short flags for the common keys: `--epochs 5` means `--train.epochs=5`.
SHORT_FLAGS = {
    "epochs": "train.epochs", "layers": "model.layers", "dataset": "data.dataset",
    "data-dir": "data.data_dir", "schedule": "train.schedule", "out": "out",
    "seed": "train.seed", "transport": "pipeline.transport", "devices": "pipeline.devices",
    "threads-per-stage": "pipeline.threads_per_stage", "replay": "pipeline.replay",
    "max-staleness": "pipeline.max_staleness", "normalization": "model.normalization",
    "batch-size": "train.batch_size", "lr": "train.lr", "queue-policy": "pipeline.queue_policy",
    "eval-every": "train.eval_every", "probe-every": "drift.probe_every",
    "resume": "pipeline.resume", "overwrite": "pipeline.overwrite", "head": "model.head",
}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

# FFPIPE_* variables that are not config keys: the worker's own role and config file.
WORKER_VARIABLES = ("FFPIPE_ROLE", "FFPIPE_INDEX", "FFPIPE_CONFIG")


@functools.cache
def defaults() -> dict[str, tuple[object, dict]]:
    """{dotted key: (default, field metadata)} of every key a run can set."""
    return {key: (value, meta) for key, value, meta in iter_fields(RunConfig())}


def flag_values(key: str) -> tuple[str, ...] | None:
    """The words that may follow a key's option as its value without `=`, when the option
    may also stand alone (meaning true): booleans, and `pipeline.resume` (true, false,
    auto). None for every other key: its option always takes a value."""
    default, meta = defaults().get(key, (None, {}))
    choices = tuple(meta.get("choices") or ())
    if isinstance(default, bool):
        return TRUE + FALSE
    if "true" in choices and "false" in choices:
        return TRUE + FALSE + choices
    return None


def option_names() -> list[str]:
    """Every option `ffpipe train` takes, as typed: for "did you mean"."""
    names = ["--config"] + [f"--{s}" for s in SHORT_FLAGS] + [f"--{k}" for k in defaults()]
    return names + [f"--no-{s}" for s, k in SHORT_FLAGS.items() if flag_values(k)]


def unknown_option(name: str) -> ConfigError:
    return ConfigError(f"unknown option --{name}{did_you_mean(f'--{name}', option_names())}; "
                       f"`ffpipe train --help` lists every option")


def option_key(name: str) -> str:
    """The dotted key an option name sets (`epochs` -> train.epochs); a misspelt short
    flag fails here, a misspelt dotted key in `config` (both say what was meant)."""
    if name in SHORT_FLAGS:
        return SHORT_FLAGS[name]
    if "." in name:
        return name.replace("-", "_")
    raise unknown_option(name)


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """`--config F`, `--train.epochs=5`, `--train.epochs 5`, `--epochs 5`, and booleans
    as `--head`, `--head false`, `--head=false`, `--no-head` (`--resume`, `--resume auto`)."""
    config, overrides, i = None, [], 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}; options look like --epochs 5 "
                              f"or --train.epochs=5")
        name, eq, value = tok[2:].partition("=")
        i += 1
        if name == "config":
            if not eq:
                if i >= len(argv):
                    raise ConfigError("--config needs a value: a TOML file or a run's "
                                      "config.json")
                value, i = argv[i], i + 1
            config = value
            continue
        negated = name.startswith("no-") and name not in SHORT_FLAGS
        key = option_key(name[3:] if negated else name)
        words = flag_values(key)
        if negated:
            if words is None or eq:
                raise ConfigError(f"--{name}: only a boolean option has a --no- form; "
                                  f"use --{name[3:]}=VALUE")
            value = "false"
        elif not eq and words is not None:  # a flag: the value is optional
            if i < len(argv) and argv[i].lower() in words:
                value, i = argv[i], i + 1
            else:
                value = "true"
        elif not eq:
            if i >= len(argv):
                raise ConfigError(f"--{name} needs a value") if key in defaults() \
                    else unknown_option(name)
            value, i = argv[i], i + 1
        if words is not None:  # yes/on/1 and no/off/0 as the config spells them
            value = "true" if value.lower() in TRUE else "false" if value.lower() in FALSE \
                else value
        overrides.append((key, value))
    return config, overrides


def config_from_argv(argv: list[str]) -> RunConfig:
    path, overrides = parse_overrides(argv)
    return load_config(path, overrides)


def env_overrides(environ=os.environ) -> list[tuple[str, str]]:
    """`FFPIPE_<SHORT_FLAG>` (EPOCHS, LAYERS, ...) or `FFPIPE_<SECTION>__<KEY>`
    (TRAIN__LR, NET__BASE_PORT, ...); any other FFPIPE_ name is an error."""
    out = []
    for name, value in sorted(environ.items()):
        if not name.startswith("FFPIPE_") or name in WORKER_VARIABLES:
            continue
        key = name[len("FFPIPE_"):].lower()
        if "__" in key:
            out.append((key.replace("__", "."), value))
        elif key.replace("_", "-") in SHORT_FLAGS:
            out.append((SHORT_FLAGS[key.replace("_", "-")], value))
        else:
            known = [f"FFPIPE_{s.replace('-', '_').upper()}" for s in SHORT_FLAGS]
            raise ConfigError(f"environment variable {name}: unknown setting"
                              f"{did_you_mean(name, known)}; use FFPIPE_<SECTION>__<KEY>, "
                              f"e.g. FFPIPE_TRAIN__EPOCHS")
    return out
