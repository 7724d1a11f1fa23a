"""One FF layer's loss and its gradients in closed form: the train step without autograd.

The layer is `h = relu(x W^T + b)` on a normalized, detached input `x`, and its loss
depends on `h` only through each row's goodness `g` (plus, optionally, the running mean
of the positive rows for peer normalization). So the whole backward pass is

    dL/dg      one number per row (the derivative of softplus is a sigmoid)
    dL/dpre    = 2 * h * dL/dg   (sum goodness; / width for mean) — h is 0 wherever the
                 ReLU is off, which is exactly where its derivative is 0
    dL/dW      = dL/dpre^T x     (the one backward GEMM: no input gradient is needed)
    dL/db      = column sums of dL/dpre

Autograd computes the same numbers (`tests/unit/test_ff_grad.py` compares them for every
loss, goodness, normalization and with peer normalization), but records a graph, keeps
the products and casts of every op, and walks it back op by op: on one CPU thread, at
batch 100 of a 1000x1000 layer in bfloat16, that bookkeeping cost more than the two GEMMs.
Here the step is two GEMMs and a handful of element-wise passes over the activities,
with the products in the layer's compute dtype and everything else in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.ff import ff_loss, normalize, symba_loss


@dataclass
class StepGrads:
    loss: torch.Tensor           # scalar, float32 (before any loss scale)
    g_pos: torch.Tensor          # [B] goodness of the positive rows, float32
    g_neg: torch.Tensor          # [B]
    h: torch.Tensor              # [2B, d_out] activities of [pos; neg], float32
    norms: torch.Tensor          # [2B] each row's Euclidean norm (what `normalize` needs)
    grad_w: torch.Tensor         # [d_out, d_in] float32
    grad_b: torch.Tensor         # [d_out] float32
    peer_mean: torch.Tensor | None  # the new running mean of h_pos (peer normalization)
    grad_w_bound: torch.Tensor   # scalar >= every |grad_w| entry


def normalized_pair(pos: torch.Tensor, neg: torch.Tensor, mode: str,
                    dtype: torch.dtype) -> torch.Tensor:
    """`normalize(cat([pos, neg]), mode).to(dtype)`, each half divided straight into one
    buffer: no concatenated copy, no separate cast."""
    n = len(pos)
    out = torch.empty((2 * n, pos.shape[1]), dtype=dtype, device=pos.device)
    normalize(pos, mode, out=out[:n])
    normalize(neg, mode, out=out[n:])
    return out


def input_bound(x: torch.Tensor, mode: str) -> torch.Tensor | float:
    """An upper bound on |x| for rows normalized by `mode`: an rms-normalized row has
    sum of squares = width, a length-normalized one 1; unnormalized rows are searched."""
    if mode == "rms":
        return x.shape[1] ** 0.5
    if mode == "length":
        return 1.0
    return x.abs().amax().float() if x.numel() else 0.0


@torch.no_grad()
def layer_step_grads(weight: torch.Tensor, bias: torch.Tensor, pos: torch.Tensor,
                     neg: torch.Tensor, *, normalization: str, compute_dtype,
                     goodness: str, loss: str, theta: float, alpha: float,
                     peer_lambda: float = 0.0, peer_mean: torch.Tensor | None = None,
                     grad_scale: float = 1.0, dropout: float = 0.0,
                     generator: torch.Generator | None = None) -> StepGrads:
    """Loss and gradients of one FF layer on the batch (pos, neg), both [B, d_in].

    `compute_dtype` (None = float32) is the precision of the two products; `grad_scale`
    multiplies the gradients (a float16 loss scale), not the returned loss. `dropout`
    zeroes that fraction of the normalized inputs (the others scaled by 1 / (1 - p)),
    drawn from `generator`: the layer then learns on, and passes on, the dropped input."""
    B = len(pos)
    dt = compute_dtype or torch.float32
    xc = normalized_pair(pos, neg, normalization, dt)
    keep = 1.0
    if dropout > 0:
        keep = 1.0 - dropout
        mask = torch.empty_like(xc).bernoulli_(keep, generator=generator)
        xc.mul_(mask.mul_(1.0 / keep))
    pre = torch.addmm(bias.to(dt), xc, weight.to(dt).t())
    h = pre.relu_().float()
    norms = torch.linalg.vector_norm(h, dim=1)
    g = norms.square()
    if goodness == "mean":
        g = g / h.shape[1]
    g_pos, g_neg = g[:B], g[B:]
    if loss == "symba":
        margin = -alpha * (g_pos - g_neg)
        value = symba_loss(g_pos, g_neg, alpha)
        d_pos = -alpha * torch.sigmoid(margin) / B
        dg = torch.cat([d_pos, -d_pos])
    else:
        value = ff_loss(g_pos, g_neg, theta)
        dg = torch.cat([-torch.sigmoid(theta - g_pos), torch.sigmoid(g_neg - theta)]) / B
    # dL/dpre[i, j] = coef[i] * h[i, j] (plus the peer term): |dL/dpre| <= |coef| ||h_i||
    coef = dg * (2.0 * grad_scale / (h.shape[1] if goodness == "mean" else 1.0))
    d_bound = (coef.abs() * norms).amax()
    new_peer = None
    if peer_lambda > 0:
        # term = sum_j (m_j - mean(m))^2, m = 0.9 m_old + 0.1 mean_i h_pos[i] (mean(m)
        # held constant): dterm/dh_pos[i, j] = 2 (m_j - mean(m)) * 0.1 / B. It reaches the
        # pre-activation of every unit, active or not (a straight-through ReLU, as in
        # loeweX/Forward-Forward): through the ReLU's own gradient it would never reach a
        # dead unit, whose revival is the term's purpose. (The ff term is unaffected: its
        # gradient is 2 h coef, zero wherever h is.)
        new_peer = 0.9 * peer_mean + 0.1 * h[:B].mean(dim=0)
        spread = new_peer - new_peer.mean()
        value = value + peer_lambda * spread.square().sum()
        d_peer = (2.0 * peer_lambda * 0.1 / B * grad_scale) * spread
        d_pre = h * coef.unsqueeze(1)
        d_pre[:B] += d_peer
        grad_b, d_low = d_pre.sum(dim=0), d_pre.to(dt)
        d_bound = d_bound + d_peer.abs().amax()
    else:
        # The column sums of coef[i] h[i, j] are one matrix-vector product (memory-bound,
        # not one of the step's GEMMs); the products are written straight in the compute
        # dtype (one pass, no float32 copy).
        grad_b = torch.mv(h.t(), coef)
        d_low = torch.mul(h, coef.unsqueeze(1), out=torch.empty(h.shape, dtype=dt,
                                                                  device=h.device))
    grad_w = (d_low.t() @ xc).float()
    # Each entry of grad_w sums 2B products of one d_pre and one x entry; the factor 2
    # covers the rounding of both to the compute dtype.
    bound = 2.0 * len(xc) * d_bound * input_bound(xc, normalization) / keep
    return StepGrads(value, g_pos, g_neg, h, norms, grad_w, grad_b, new_peer, bound)
