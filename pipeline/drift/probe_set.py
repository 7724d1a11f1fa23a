"""The fixed drift probe set: the same training images every time, so that any change
in a stage's input for them is drift, never a change of data."""

from __future__ import annotations

import torch

from pipeline.config import RunConfig
from pipeline.ff import overlay


def probe_inputs(x: torch.Tensor, y: torch.Tensor, cfg: RunConfig, num_classes: int):
    """The first `probe_size` training images with their true label, i.e. positive data,
    the distribution each layer is trained to call good."""
    n = min(cfg.drift.probe_size, len(x))
    return overlay(x[:n], y[:n], num_classes, cfg.model.label_strength)
