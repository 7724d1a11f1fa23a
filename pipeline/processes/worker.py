"""`ffpipe worker`: one process of a cluster (source, stage k or sink), what docker
compose and `launch/zmq_local.sh` start (and `ffpipe train --transport zmq` on one
machine). Settings come from (lowest first) a `--config` file (TOML, or a run's
config.json), `FFPIPE_*` environment variables, then command-line options:

    FFPIPE_ROLE=stage FFPIPE_INDEX=1 FFPIPE_EPOCHS=5 FFPIPE_NET__HOST=stage1 ffpipe worker

`FFPIPE_<SHORT_FLAG>` (EPOCHS, LAYERS, DATASET, DATA_DIR, OUT, SEED, ...) or
`FFPIPE_<SECTION>__<KEY>` (NET__BASE_PORT, TRAIN__LR, ...) name any config key.

Before it starts, a zmq worker applies the run-folder rules it can apply alone
(`run_dir.claim_for_worker`): it never writes into a finished run, and `--resume=auto`
resumes only what it has a checkpoint of.

Under torchrun (`--transport dist`, RANK set) the role comes from the rank instead, and
the process goes where every torchrun rank goes: `processes.dist.run_rank`.
"""

from __future__ import annotations

import os

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.overrides import env_overrides, parse_overrides
from pipeline.processes import dist, zmq
from pipeline.processes.run_dir import claim_for_worker
from pipeline.runtime.roles import ROLES


def take_flags(argv: list[str], names: tuple[str, ...]) -> tuple[dict, list[str]]:
    """Pull `--name value` / `--name=value` for `names` out of argv: (found, the rest)."""
    found, rest, i = {}, [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name.startswith("--") and name[2:] in names:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name} needs a value")
                value, i = argv[i + 1], i + 1
            found[name[2:]] = value
        else:
            rest.append(argv[i])
        i += 1
    return found, rest


def parse_worker_args(argv: list[str], environ=os.environ):
    """-> (role, index, restarts, cfg); role and index are None under torchrun.
    `--restart N`: this worker replaces one that died (the launcher counts them)."""
    flags, rest = take_flags(argv, ("role", "index", "restart"))
    role = flags.get("role", environ.get("FFPIPE_ROLE"))
    index = flags.get("index", environ.get("FFPIPE_INDEX", "0"))
    path, overrides = parse_overrides(rest)
    cfg = load_config(path or environ.get("FFPIPE_CONFIG"), env_overrides(environ) + overrides)
    if "RANK" in environ and cfg.pipeline.transport == "dist":
        return None, None, 0, cfg
    if role not in ROLES:
        raise ConfigError(f"--role: give one of {', '.join(ROLES)} (or FFPIPE_ROLE)")
    try:
        index = int(index)
    except ValueError:
        raise ConfigError(f"--index: expected an integer, got {index!r}") from None
    K = cfg.n_layers
    if role == "stage" and not 0 <= index < K:
        raise ConfigError(f"--index: stage index must be in 0..{K - 1} for {K} layers")
    restarts = flags.get("restart", "0")
    if not restarts.isdigit():
        raise ConfigError(f"--restart: expected a count, got {restarts!r}")
    return role, index, int(restarts), cfg


def worker_main(argv: list[str], environ=os.environ) -> int:
    role, index, restarts, cfg = parse_worker_args(argv, environ)
    if cfg.pipeline.transport == "dist":
        dist.run_rank(cfg)
        return 0
    if cfg.pipeline.transport == "zmq":
        claim_for_worker(cfg, role, index)
        return zmq.serve(role, index, cfg, restarts)
    raise ConfigError("ffpipe worker runs the zmq or dist transport; set --transport zmq "
                      "(local runs use `ffpipe train`)")
