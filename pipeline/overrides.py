"""Where config overrides come from: command-line options and `FFPIPE_*` variables.

Both produce `(dotted key, value)` pairs for `config.load_config`, so every entry point
(`ffpipe train`, `ffpipe worker`, compare, bench, the launch scripts) parses options the
same way and a bad one fails in one line before any process starts.
"""

from __future__ import annotations

import os

from pipeline.config import BOOL_FLAGS, SHORT_FLAGS, RunConfig, load_config
from pipeline.errors import ConfigError

# FFPIPE_* variables that are not config keys: the worker's own role and config file.
WORKER_VARIABLES = ("FFPIPE_ROLE", "FFPIPE_INDEX", "FFPIPE_CONFIG")


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """`--config F`, `--train.epochs=5`, `--train.epochs 5`, `--epochs 5`, `--resume`."""
    config, overrides, i = None, [], 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}; options look like --epochs 5 "
                              f"or --train.epochs=5")
        name, eq, value = tok[2:].partition("=")
        if name in BOOL_FLAGS and not eq:
            overrides.append((BOOL_FLAGS[name], "true"))
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{name} needs a value")
            value, i = argv[i + 1], i + 1
        i += 1
        if name == "config":
            config = value
        else:
            key = SHORT_FLAGS.get(name) or BOOL_FLAGS.get(name) or name.replace("-", "_")
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
            raise ConfigError(f"environment variable {name}: unknown setting; use "
                              f"FFPIPE_<SECTION>__<KEY>, e.g. FFPIPE_TRAIN__EPOCHS")
    return out
