"""What a run needs before its first process starts: a run folder that holds no other
run, checkpoints that fit the model when resuming, data that fits the model, and the
resolved config.json.

The folder rules (`claim`): a run never writes into a folder that holds another run's
files unless `--resume` (the same model: checkpoint count and shapes are checked here,
before anything is written) or `--overwrite` (the earlier run's files are removed first;
nothing else in the folder is touched). `--resume=auto` resumes when there are
checkpoints of a run that has not finished and starts fresh otherwise.

A worker of a cluster (`ffpipe worker`: compose, launch/zmq_local.sh) cannot apply these
rules: its siblings start at the same moment and write into the same folder.
`claim_for_worker` keeps what matters there: a finished run is never written into, and
`--resume=auto` is resolved from the worker's own files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from pipeline.augment import check_augment
from pipeline.config import RECORD_ONLY_KEYS, RunConfig, to_dict
from pipeline.datasets import Dataset, load_dataset
from pipeline.errors import ConfigError
from pipeline.provenance import provenance
from pipeline.runlog import write_json_atomic
from pipeline.runtime import checkpoint

log = logging.getLogger(__name__)

# What a run writes into its folder (README, "Files a run writes").
RUN_FILES = ("config.json", "summary.json", "sink.jsonl", "eval_scores.pt", "model.safetensors",
             "drift.png", "report.md", "processes.jsonl")
RUN_DIRS = ("ckpt", "tensorboard")


def run_files(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    found = [out / n for n in RUN_FILES + RUN_DIRS if (out / n).exists()]
    return found + sorted(out.glob("stage*.jsonl")) + sorted(out.glob("evaluate-*.json"))


def stage_checkpoints(out: Path) -> list[Path]:
    return sorted((out / "ckpt").glob("stage*.pt"))


def finished_run(out: Path) -> bool:
    """`out` holds a run that ended: a summary.json that does not say it was interrupted
    (one that cannot be read counts as finished: it may be a result)."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return not (isinstance(summary, dict) and summary.get("interrupted"))


def check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the run")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write in {parent}; choose a folder you can "
                          f"write to")


# Settings that define what a run computes: a resume must keep them, or the continued run
# silently trains something else (another lr, threshold or schedule length from the step
# it resumes at). How the processes run, log and talk may change between the two halves.
TRAINING_SECTIONS = ("data", "model", "train")
MAY_CHANGE = {"data.data_dir", "train.threads", "train.device", "train.log_every",
              "train.eval_every"}
BUDGET = "train.epochs"  # may change (extend or cut a run), said in a warning line
PIPELINE_TRAINING = {"pipeline.queue_policy", "pipeline.replay", "pipeline.max_staleness",
                     "pipeline.wire_dtype"}
# What a run recorded before a key existed trained with (the key's value at the time).
BEFORE_KEY = {"data.augment": "none", "model.threshold_scale": 1.0}


def _leaves(table: dict, prefix: str = ""):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def training_changes(recorded: dict, cfg: RunConfig) -> list[str]:
    """'key: recorded -> now' for every training setting the resumed config changes."""
    old = dict(_leaves(recorded))
    changes = []
    for key, now in _leaves(json.loads(json.dumps(to_dict(cfg)))):
        if key in MAY_CHANGE or not (key.split(".")[0] in TRAINING_SECTIONS
                                     or key in PIPELINE_TRAINING):
            continue
        before = old.get(key, BEFORE_KEY.get(key, now))  # older file, unknown key: no claim
        if before != now:
            changes.append(f"{key}: {before!r} -> {now!r}")
    return changes


def check_checkpoints(cfg: RunConfig, out: Path) -> None:
    """The checkpoints in `out` belong to a model with exactly these layers, trained with
    these settings. A stage may have none yet (killed before its first), so the layer
    count is the recorded run's."""
    K, w = cfg.n_layers, cfg.model.layers
    table = recorded_config(out / "config.json") or {}
    model = table.get("model")
    recorded = model.get("layers") if isinstance(model, dict) else None
    if recorded and recorded != w:
        raise ConfigError(f"--resume: {out} holds a run of --layers "
                          f"{','.join(map(str, recorded))}, not {','.join(map(str, w))}; "
                          f"resume with the run's own --layers, or use another --out")
    extra = [p.name for p in stage_checkpoints(out)
             if p.stem[5:].isdigit() and int(p.stem[5:]) >= K]
    if extra:
        raise ConfigError(f"--resume: {out} has checkpoints for more layers than --layers "
                          f"{','.join(map(str, w))} ({', '.join(extra)}); resume with the "
                          f"run's own --layers, or use another --out")
    for k in range(K):
        state = checkpoint.load(checkpoint.ckpt_path(out, f"stage{k}"))
        shape = state and state.get("trainer", {}).get("shape")
        if shape is not None and shape != [w[k], w[k + 1]]:
            raise ConfigError(f"--resume: ckpt/stage{k}.pt is a {shape[0]}x{shape[1]} layer, "
                              f"--layers asks for {w[k]}x{w[k + 1]}; resume with the run's "
                              f"own --layers, or use another --out")
    changes = training_changes(table, cfg) if table else []
    budget = [c for c in changes if c.startswith(BUDGET + ":")]
    changes = [c for c in changes if c not in budget]
    if budget and not changes:
        log.warning("--resume: %s: the run now ends there, and the learning-rate schedule "
                    "follows the new length from the step it resumes at", budget[0])
    if changes:
        raise ConfigError(f"--resume: {out} was trained with other settings "
                          f"({'; '.join(changes[:4])}{'; ...' if len(changes) > 4 else ''}); "
                          f"resume with the run's own: --config {out}/config.json --resume, "
                          f"or use another --out")


def claim(cfg: RunConfig) -> None:
    """Apply the folder rules to cfg.out (resolving `--resume=auto`); raises ConfigError
    before anything is written. With --overwrite the earlier run's files go."""
    out, p = Path(cfg.out), cfg.pipeline
    check_writable(out)
    if p.resume == "auto":  # a finished run is not continued by accident: refused below
        p.resume = "true" if stage_checkpoints(out) and not finished_run(out) else "false"
    if p.resume == "true":
        if p.overwrite:
            raise ConfigError("--resume and --overwrite: choose one (continue the run in "
                              "--out, or replace it)")
        if cfg.train.schedule != "pipelined":
            raise ConfigError(f"--resume: the {cfg.train.schedule} schedule does not "
                              f"resume (only pipelined stages checkpoint as they train)")
        if not stage_checkpoints(out):
            raise ConfigError(f"--resume: {out} has no checkpoints to continue from; drop "
                              f"--resume (or use --resume=auto: resume if there are any)")
        check_checkpoints(cfg, out)
        return
    held = run_files(out)
    if held and not p.overwrite:
        what = "a finished run" if (out / "summary.json").exists() else "another run's files"
        raise ConfigError(f"--out {out} holds {what} ({', '.join(h.name for h in held[:3])}"
                          f"{', ...' if len(held) > 3 else ''}); pass --resume to continue it, "
                          f"--overwrite to replace it, or choose another --out")
    for h in held:
        shutil.rmtree(h) if h.is_dir() else h.unlink()
    if held:
        log.info("--overwrite: removed %d files of the earlier run in %s", len(held), out)


def claim_for_worker(cfg: RunConfig, role: str, index: int) -> None:
    """The folder rules one worker can apply alone (raises ConfigError): a finished run is
    refused unless --resume=true asks for it (so a re-used compose RUN_NAME cannot overwrite
    a result), resumed checkpoints must fit the model, and --resume=auto becomes true only
    where this worker has something of its own to continue (its checkpoint; the sink's
    sink.jsonl), so a fresh process does not call itself resumed."""
    out, p = Path(cfg.out), cfg.pipeline
    check_writable(out)
    if p.resume != "true" and finished_run(out):
        raise ConfigError(f"--out {out} holds a finished run (summary.json); a new run needs "
                          f"a new --out (with compose: a new RUN_NAME), or pass --resume to "
                          f"continue this one")
    if p.resume == "auto":
        own = {"source": checkpoint.ckpt_path(out, "source"),
               "stage": checkpoint.ckpt_path(out, f"stage{index}"),
               "sink": out / "sink.jsonl"}[role]
        p.resume = "true" if Path(own).exists() else "false"
    if p.resume == "true":
        check_checkpoints(cfg, out)


def load_checked_dataset(cfg: RunConfig) -> Dataset:
    ds = load_dataset(cfg.data)
    ds.check_fits(cfg.model.layers)
    check_augment(cfg.data.augment, ds)
    return ds


def recorded_config(path: Path) -> dict | None:
    """A run's config.json without what only describes the run (provenance)."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(table, dict):
        return None
    return {k: v for k, v in table.items() if k not in RECORD_ONLY_KEYS}


def write_run_config(cfg: RunConfig) -> None:
    """config.json: the resolved config of the run and where it came from (the one place
    it is written). A worker re-reading the file its launcher wrote leaves it as it is."""
    path = Path(cfg.out) / "config.json"
    resolved = to_dict(cfg)
    if recorded_config(path) == json.loads(json.dumps(resolved)):
        return
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**resolved, "provenance": provenance()})
