"""Forward-Forward maths (Hinton 2022), no I/O.

A layer is `h = relu(W @ normalize(x) + b)`. Its goodness is the sum (or mean) of
`h**2`; it should be above the threshold `theta` for positive data (image with its true
label overlaid) and below it for negative data (same image, a wrong label). Inference
overlays every candidate label in turn and picks the one with the largest goodness
summed over layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-8


def row_scale(norms: torch.Tensor, width: int, mode: str) -> torch.Tensor:
    """What `normalize` divides each row by, from the rows' Euclidean norms."""
    if mode == "rms":
        return norms * width ** -0.5 + EPS
    if mode == "length":
        return norms + EPS
    raise ValueError(f"unknown normalization {mode!r}")


def normalize(x: torch.Tensor, mode: str = "rms", out: torch.Tensor | None = None) -> torch.Tensor:
    """Remove each row's scale so only its direction passes to the next layer.

    rms:    x / sqrt(mean(x**2))  -> mean square 1, entries O(1) (Hinton's ffnormrows)
    length: x / ||x||             -> unit length, entries O(1/sqrt(width))
    none:   x unchanged           -> the ablation; goodness leaks through the scale

    Always in float32 (a no-op for float32 input): a layer computed in bfloat16 or a
    bfloat16 hop hands over its activities, and their statistics need the precision.
    The row norms come from one fused reduction (`vector_norm`), not a squared copy.
    `out` (any float dtype) receives the result in the same pass, cast on the way.
    """
    x = x.float()
    if mode == "none":
        return x if out is None else out.copy_(x)
    scale = row_scale(torch.linalg.vector_norm(x, dim=-1, keepdim=True), x.shape[-1], mode)
    return torch.div(x, scale, out=out) if out is not None else x / scale


def normalize_known(x: torch.Tensor, norms: torch.Tensor, mode: str = "rms") -> torch.Tensor:
    """`normalize(x, mode)` for float32 rows whose norms the caller already has (the train
    step has them from the goodness): one pass over `x`."""
    if mode == "none":
        return x.float()
    return x.float() / row_scale(norms.unsqueeze(-1), x.shape[-1], mode)


def goodness(h: torch.Tensor, kind: str = "sum") -> torch.Tensor:
    """Per-row goodness: sum (default) or mean of squared activities, in float32 whatever
    precision the layer computed `h` in (a bfloat16 sum of 1,000 squares keeps ~3 digits)."""
    sq = h.float().pow(2)
    return sq.sum(dim=-1) if kind == "sum" else sq.mean(dim=-1)


def ff_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, theta: float) -> torch.Tensor:
    """softplus(theta - g_pos) + softplus(g_neg - theta), averaged over the batch.

    This is -log sigmoid(g_pos - theta) - log sigmoid(theta - g_neg): the logistic loss of
    calling positives "above threshold" and negatives "below".
    """
    return (F.softplus(theta - g_pos) + F.softplus(g_neg - theta)).mean()


def symba_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, alpha: float) -> torch.Tensor:
    """softplus(-alpha * (g_pos - g_neg)), averaged: SymBa's pairwise loss (Lee & Song,
    2023). Each positive is compared with its own negative (the same image, a wrong label),
    so no threshold is needed and the two terms cannot pull against each other."""
    return F.softplus(-alpha * (g_pos - g_neg)).mean()


def overlay(x: torch.Tensor, labels: torch.Tensor | None, num_classes: int,
            strength: float = 1.0) -> torch.Tensor:
    """Copy of `x` with the label one-hot (times `strength`) in its first C inputs.

    `labels=None` gives the neutral overlay (strength / C everywhere) used by the head.
    """
    out = x.clone()
    if labels is None:
        out[:, :num_classes] = strength / num_classes
    else:
        out[:, :num_classes] = 0.0
        out[torch.arange(len(x), device=x.device), labels] = strength
    return out


def overlay_all(x: torch.Tensor, num_classes: int, strength: float = 1.0) -> torch.Tensor:
    """Every image with every candidate label: rows [img0+c0, img0+c1, ..., img1+c0, ...]."""
    n = len(x)
    rep = x.repeat_interleave(num_classes, dim=0)
    labels = torch.arange(num_classes, device=x.device).repeat(n)
    return overlay(rep, labels, num_classes, strength)


def random_wrong_labels(labels: torch.Tensor, num_classes: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly drawn wrong label per row: true + U{1..C-1} mod C, never the true one."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift.to(labels.device)) % num_classes


def hard_wrong_labels(scores: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """A wrong label per row, sampled in proportion to softmax(scores) over wrong labels.

    `scores` [N, C] are the model's own label scores (e.g. summed goodness); the true label
    gets probability exactly zero. Labels the model confuses with the truth come up more.
    """
    masked = scores.float().clone()
    masked[torch.arange(len(labels), device=masked.device), labels] = -math.inf
    probs = torch.softmax(masked, dim=1)
    # Rows where every wrong label underflowed to 0 (cannot happen with a finite max, but be
    # safe): fall back to uniform over wrong labels.
    bad = ~torch.isfinite(probs).all(dim=1) | (probs.sum(dim=1) <= 0)
    if bad.any():
        probs[bad] = 1.0
        probs[bad, labels[bad]] = 0.0
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(labels.device)


class FFLayer(nn.Module):
    """Linear + ReLU applied to the normalized input.

    `compute_dtype` (None = float32) is the precision of the matmul: the weights stay
    float32 (they are what the optimizer updates) and are cast for each product; the
    input's normalization statistics are always taken in float32.
    """

    def __init__(self, d_in: int, d_out: int, normalization: str = "rms",
                 compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.normalization = normalization
        self.compute_dtype = None if compute_dtype == torch.float32 else compute_dtype
        # 1/sqrt(fan_in) normal init (Hinton's code): with rms-normalized inputs the initial
        # pre-activations have unit variance, so goodness starts near width/2.
        nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(d_in))
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, self.normalization)
        dt = self.compute_dtype
        if dt is None:
            return F.relu(self.linear(x))
        w, b = self.linear.weight, self.linear.bias
        return F.relu(F.linear(x.to(dt), w.to(dt), b.to(dt)))


@torch.no_grad()
def layer_label_scores(layers: list[nn.Module], x: torch.Tensor, num_classes: int,
                       strength: float = 1.0, kind: str = "sum",
                       chunk: int = 1000) -> torch.Tensor:
    """[N, L, C]: each layer's own goodness for each candidate label."""
    out = []
    for start in range(0, len(x), chunk):
        h = overlay_all(x[start:start + chunk], num_classes, strength)
        per = []
        for layer in layers:
            h = layer(h)
            per.append(goodness(h, kind).view(-1, num_classes))
        out.append(torch.stack(per, dim=1))
    return torch.cat(out)


def summed_scores(per_layer: torch.Tensor, skip: int = 1) -> torch.Tensor:
    """[N, C]: the goodness of layers `skip..` of `layer_label_scores`, added in layer
    order (what goodness inference ranks labels by)."""
    total = torch.zeros_like(per_layer[:, 0])
    for k in range(skip, per_layer.shape[1]):
        total += per_layer[:, k]
    return total


def label_scores(layers: list[nn.Module], x: torch.Tensor, num_classes: int,
                 strength: float = 1.0, skip: int = 1, kind: str = "sum",
                 chunk: int = 1000) -> torch.Tensor:
    """[N, C] goodness summed over layers `skip..` for each candidate label."""
    return summed_scores(layer_label_scores(layers, x, num_classes, strength, kind, chunk), skip)


def predict(layers: list[nn.Module], x: torch.Tensor, num_classes: int, **kw) -> torch.Tensor:
    """Label with the highest summed goodness."""
    return label_scores(layers, x, num_classes, **kw).argmax(dim=1)


class LinearHead(nn.Module):
    """Linear softmax on the concatenated, detached, normalized activities of layers 1..

    One pass with the neutral label overlay replaces the C passes of goodness inference.
    """

    def __init__(self, widths: list[int], num_classes: int):
        super().__init__()
        self.linear = nn.Linear(sum(widths), num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(feats)


@torch.no_grad()
def head_features(layers: list[nn.Module], x: torch.Tensor, num_classes: int,
                  strength: float = 1.0, normalization: str = "rms") -> torch.Tensor:
    """Neutral-label pass; normalized activities of layers 1.. concatenated."""
    h = overlay(x, None, num_classes, strength)
    feats = []
    for i, layer in enumerate(layers):
        h = layer(h)
        if i >= 1:
            feats.append(normalize(h, normalization))
    return torch.cat(feats, dim=1)
