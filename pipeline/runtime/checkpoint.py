"""Atomic checkpoints: torch.save to a temp file in the same folder, then rename.

A reader never sees a half-written file, and a crash mid-write leaves the previous
checkpoint intact. Loading uses `weights_only=True`: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline import precision
from pipeline.errors import UserError
from pipeline.ff import FFLayer


def ckpt_path(out: str | Path, name: str) -> Path:
    return Path(out) / "ckpt" / f"{name}.pt"


def save_atomic(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict | None:
    """The checkpoint at `path`, or None if there is none yet (a fresh start)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: tell the user, don't guess
        raise UserError(f"{path}: cannot load checkpoint ({type(exc).__name__}); delete it to "
                        f"start that stage fresh, or drop --resume") from None


def save_layer_states(out: str | Path, states: list[dict]) -> None:
    """Final per-layer checkpoints for the single-process schedules, in the same layout
    and format as the pipelined stages' (`{"trainer": LayerTrainer.state_dict()}`)."""
    for k, state in enumerate(states):
        save_atomic(ckpt_path(out, f"stage{k}"), {"trainer": state})


def layer_states(run_dir: str | Path, widths: list[int]) -> list[dict]:
    """The FF layers' weights (`FFLayer.state_dict()`, no optimizer state) in a run's
    ckpt/stage{k}.pt, each checked against the layer widths the run was configured with."""
    states = []
    for k in range(len(widths) - 1):
        path = ckpt_path(run_dir, f"stage{k}")
        state = load(path)
        if state is None:
            raise UserError(f"{path} is missing; was the run in {run_dir} finished?")
        layer = state["trainer"]["layer"]
        shape = list(layer["linear.weight"].shape)
        if shape != [widths[k + 1], widths[k]]:
            raise UserError(f"{path} holds a {shape[1]}x{shape[0]} layer, the run's config "
                            f"says {widths[k]}x{widths[k + 1]}; the folder mixes two runs")
        states.append(layer)
    return states


def save_module(out: str | Path, name: str, module) -> None:
    """ckpt/{name}.pt holding one module's weights (the linear head, backprop's readout):
    what a finished run's model file is built from when it has none."""
    save_atomic(ckpt_path(out, name), {"weights": module.state_dict()})


def load_module_state(run_dir: str | Path, name: str) -> dict | None:
    state = load(ckpt_path(run_dir, name))
    return None if state is None else state["weights"]


def load_layers(run_dir: str | Path, cfg) -> list:
    """The trained FF layers of a finished run, from ckpt/stage{k}.pt, multiplying in the
    precision the run trained in (`precision.of_run`), so they score as its stages did."""
    w, layers = cfg.model.layers, []
    dtype = precision.DTYPES[precision.of_run(cfg)]
    for k, state in enumerate(layer_states(run_dir, w)):
        layer = FFLayer(w[k], w[k + 1], cfg.model.normalization, dtype)
        layer.load_state_dict(state)
        layers.append(layer.eval())
    return layers
