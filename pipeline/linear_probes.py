"""Linear probes: how much class information is linearly readable from each layer.

This answers the "ensemble of linear estimators" objection to layer-local learning: if
a softmax probe on a trained layer's activities does no better than the same probe on a
RANDOM frozen layer of the same shape (or on the raw pixels), training added nothing a
linear readout could use. The probe is plain multinomial logistic regression (Adam,
minibatches, fixed seed) on standardized features, so every feature source gets the
same readout, whatever its scale (normalization `none` lets activities grow freely).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import RunConfig
from pipeline.ff import FFLayer, normalize, overlay


@torch.no_grad()
def layer_features(layers: list, x: torch.Tensor, cfg: RunConfig,
                   num_classes: int) -> list[torch.Tensor]:
    """Neutral-label pass through every layer; each layer's output normalized with the
    run's normalization (what the next layer, or the FF head, would read)."""
    h = overlay(x, None, num_classes, cfg.model.label_strength)
    feats = []
    for layer in layers:
        h = layer(h)
        feats.append(normalize(h, cfg.model.normalization))
    return feats


def random_layers(cfg: RunConfig, seed: int) -> list[FFLayer]:
    """Untrained FF layers of the run's shapes, initialized exactly as training starts."""
    w = cfg.model.layers
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        return [FFLayer(w[k], w[k + 1], cfg.model.normalization).eval()
                for k in range(len(w) - 1)]


def train_linear_probe(feats_train: torch.Tensor, y_train: torch.Tensor,
                       feats_test: torch.Tensor, y_test: torch.Tensor, epochs: int = 20,
                       seed: int = 0, batch_size: int = 128, lr: float = 1e-2) -> float:
    """Softmax regression on the train features; returns its test accuracy in [0, 1]."""
    ftr, fte = feats_train.float(), feats_test.float()
    # Standardize with train statistics: Adam then sees the same scale for every source.
    mean, std = ftr.mean(0), ftr.std(0, unbiased=False).clamp_min(1e-6)
    ftr, fte = (ftr - mean) / std, (fte - mean) / std
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    # Zero init: the problem is convex, so no random init is needed (and no global RNG).
    w = torch.zeros(ftr.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(ftr), generator=gen).split(batch_size):
            loss = F.cross_entropy(ftr[idx] @ w + b, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return ((fte @ w + b).argmax(1) == y_test).float().mean().item()


def probe_layers(layers: list, ds, cfg: RunConfig, epochs: int, seed: int) -> list[float]:
    """Test accuracy of a linear probe on each layer's normalized activities."""
    tr = layer_features(layers, ds.x_train, cfg, ds.num_classes)
    te = layer_features(layers, ds.x_test, cfg, ds.num_classes)
    return [train_linear_probe(a, ds.y_train, b, ds.y_test, epochs, seed)
            for a, b in zip(tr, te)]


def probe_input(ds, epochs: int, seed: int) -> float:
    """The same probe on the raw pixels: the floor any layer should beat."""
    return train_linear_probe(ds.x_train, ds.y_train, ds.x_test, ds.y_test, epochs, seed)
