"""Atomic checkpoints: torch.save to a temp file in the same folder, then rename.

A reader never sees a half-written file, and a crash mid-write leaves the previous
checkpoint intact. Loading uses `weights_only=True`: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline.errors import UserError


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
