"""Single-process evaluation of a trained FF stack: goodness inference and the head.

The pipelined runtime computes the same numbers by streaming eval messages through the
stages; tests check the two agree.
"""

from __future__ import annotations

import torch

from pipeline.config import RunConfig
from pipeline.ff import head_features, label_scores


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return int((pred.cpu() == y.cpu()).sum()) / max(len(y), 1)


@torch.no_grad()
def evaluate(layers, x: torch.Tensor, y: torch.Tensor, cfg: RunConfig, num_classes: int,
             head=None) -> dict:
    """Accuracy of `layers` on (x, y), computed on the device the layers live on."""
    m = cfg.model
    x = x.to(next(layers[0].parameters()).device)
    scores = label_scores(layers, x, num_classes, strength=m.label_strength,
                          skip=m.skip_layers, kind=m.goodness)
    out = {"test_accuracy": accuracy(scores.argmax(1), y)}
    if head is not None:
        feats = head_features(layers, x, num_classes, m.label_strength, m.normalization)
        out["head_accuracy"] = accuracy(head(feats).argmax(1), y)
    return out
