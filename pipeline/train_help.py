"""The text of `ffpipe train --help`, written from the config dataclasses: one group per
section, each key with its short flag, its allowed values, its help and its default as
the command line spells it (`784,1000,1000,1000`, `true`), then examples. Wrapped at 100
columns (`command_line.fill`). Nothing here imports torch.
"""

from __future__ import annotations

import textwrap
import typing

from pipeline.command_line import fill, help_width
from pipeline.config import SECTIONS, RunConfig, iter_fields
from pipeline.dataset_info import DATASET_DEFAULTS, DATASET_INPUT
from pipeline.overrides import SHORT_FLAGS, flag_values

SECTION_HELP = {
    "data": "what to train and test on",
    "model": "the network, and how it scores a label",
    "train": "schedule, optimizer and budget (every schedule)",
    "pipeline": "the processes of a pipelined run: transport, queues, checkpoints, restarts",
    "drift": "drift probes and the Page-Hinkley alarm",
    "net": "addresses for the zmq and dist transports",
}

DESCRIPTION = """\
Train a network: pipelined (a source, one process per layer, a sink) or a single-process
reference (lockstep, sequential, backprop); the run folder gets config.json, the JSONL
logs, summary.json and the checkpoints, and the final test accuracy is printed.

Settings, lowest first: the defaults below; the dataset's own defaults for keys you do not
set (the first width of --layers is the data's input size); a --config file (TOML with the
sections below, or a run's config.json); FFPIPE_<SECTION>__<KEY> variables (ffpipe worker
only); these options. Every key is --section.key VALUE or --section.key=VALUE; the common
ones also have the short flag shown beside them. A boolean takes --head, --head true,
--head=false or --no-head; a list takes commas: --layers 784,500,500."""

EXAMPLES = """\
examples:
  ffpipe train --out runs/first                      pipelined: source, 3 stage processes, sink
  ffpipe train --schedule lockstep --epochs 5        one process, every layer steps on each batch
  ffpipe train --dataset digits                      8x8 digits: --layers becomes 64,1000,1000,1000
  ffpipe train --dataset synthetic --epochs 3        seconds-scale clusters, for a quick check
  ffpipe train --transport zmq --net.base_port 6100  stages talk over zmq sockets
  ffpipe train --config configs/quick.toml --seed 1  a TOML file, then options on top
  ffpipe train --config runs/first/config.json --out runs/again     repeat a finished run"""


# Placeholders that say more than TEXT.
METAVARS = {"out": "DIR", "data.data_dir": "DIR", "net.ipc_dir": "DIR", "net.curve_dir": "DIR",
            "train.device": "DEVICE", "pipeline.devices": "DEVICE,...", "net.host": "HOST",
            "net.bind_host": "HOST", "net.store": "HOST:PORT", "net.endpoints": "URL,...",
            "data.augment": "auto|none|shift:N"}


def cli_value(value) -> str:
    """A value as it is typed on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(cli_value(v) for v in value) if value else "empty"
    if isinstance(value, float):
        return format(value, "g")
    return str(value) if value != "" else "empty"


def metavar(key: str, value, meta: dict, tp) -> str:
    if key in METAVARS:
        return METAVARS[key]
    words = flag_values(key)
    if words is not None:
        return "[" + "|".join(meta.get("choices") or ("true", "false")) + "]"
    if meta.get("choices"):
        return "{" + ",".join(meta["choices"]) + "}"
    if typing.get_origin(tp) is list:
        inner = {int: "N", float: "X"}.get(typing.get_args(tp)[0], "A")
        return f"{inner},{inner},..."
    return {int: "N", float: "X"}.get(tp, "TEXT")


def dataset_defaults(key: str) -> str:
    """What the datasets change about `key`'s default, if anything."""
    if key == "model.layers":
        sizes = {}
        for name, size in DATASET_INPUT.items():
            sizes.setdefault(size, []).append(name)
        return "; the first width is the data's input size unless --layers is given: " + \
            ", ".join(f"{'/'.join(names)} {size}" for size, names in sizes.items())
    own = [f"{name} {cli_value(d[key])}" for name, d in DATASET_DEFAULTS.items() if key in d]
    return f"; {', '.join(own)}" if own else ""


def key_entry(key: str, value, meta: dict, tp, width: int) -> str:
    short = [s for s, k in SHORT_FLAGS.items() if k == key and s != key]
    names = ", ".join([f"--{key}"] + [f"--{s}" for s in short])
    head = f"  {names} {metavar(key, value, meta, tp)}"
    text = meta.get("help", "")
    if "default:" not in text:  # `out` says what its empty default means itself
        text += f" (default: {cli_value(value)}{dataset_defaults(key)})"
    body = textwrap.fill(text, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return head + "\n" + body


def field_types(cfg: RunConfig) -> dict[str, object]:
    """{dotted key: declared type} of every leaf field."""
    out = {"out": str}
    for section in SECTIONS:
        for name, tp in typing.get_type_hints(type(getattr(cfg, section))).items():
            out[f"{section}.{name}"] = tp
    return out


def train_help() -> str:
    width = help_width()
    cfg = RunConfig()
    types = field_types(cfg)
    groups: dict[str, list[str]] = {}
    for key, value, meta in iter_fields(cfg):
        section = key.partition(".")[0] if "." in key else "run"
        groups.setdefault(section, []).append(key_entry(key, value, meta, types[key], width))
    parts = ["usage: ffpipe train [-h] [--config FILE] [--SECTION.KEY VALUE ...] "
             "[--SHORT-FLAG VALUE ...]", fill(DESCRIPTION, width),
             "options:\n  -h, --help\n        show this help and exit\n"
             "  --config FILE\n        a TOML file or a run's config.json, read before "
             "the other options (default: none)"]
    for section, entries in groups.items():
        title = "run folder:" if section == "run" else \
            f"[{section}]  {SECTION_HELP.get(section, '')}".rstrip()
        parts.append(title + "\n" + "\n".join(entries))
    return "\n\n".join(parts + [EXAMPLES]) + "\n"
