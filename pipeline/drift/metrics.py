"""How far a stage's input moved: distances between two probes of the same images.

Every function takes 2-D tensors [n, d] whose rows are the SAME fixed probe images, so
row i of `x` and row i of `ref` are the same image seen through two versions of the
upstream layers. Everything is computed in float64 (sums over thousands of units lose
digits in float32) and returned as a python float, never NaN.

Identical inputs short-circuit through `torch.equal`, so stage 0 (raw data, same bytes
every probe) reports *exactly* zero drift rather than 1e-17 of rounding noise: that makes
"stage 0 drift == 0" a check a test or a reader can rely on.
"""

from __future__ import annotations

import torch


def _f64(t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 2:
        raise ValueError(f"expected a 2-D tensor [n, d], got shape {tuple(t.shape)}")
    return t.detach().to(dtype=torch.float64)


def _pair(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, ref = _f64(x), _f64(ref).to(x.device)
    if x.shape != ref.shape:
        raise ValueError(f"probe shapes differ: {tuple(x.shape)} vs {tuple(ref.shape)}")
    return x, ref


def cosine_mean(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over rows of cos(x_i, ref_i): how much each image's representation turned.

    A zero row has no direction: two zero rows agree (cos 1), one zero row does not (0).
    """
    x, ref = _pair(x, ref)
    if torch.equal(x, ref):
        return 1.0
    nx, nr = x.norm(dim=1), ref.norm(dim=1)
    dot = (x * ref).sum(dim=1)
    both_nonzero = (nx > 0) & (nr > 0)
    cos = torch.where(both_nonzero, dot / (nx * nr).clamp_min(1e-300),
                      ((nx == 0) & (nr == 0)).to(torch.float64))
    # Rounding can push |cos| a hair past 1; clamp so "1 - cos" is never negative.
    return float(cos.clamp(-1.0, 1.0).mean())


def mean_shift(x: torch.Tensor, ref: torch.Tensor) -> float:
    """|mean(x) - mean(ref)| / |mean(ref)| with column means and L2 norms.

    If the reference mean is the zero vector the ratio is undefined; we then return the
    absolute shift |mean(x)| (0 when both are zero) so the series stays finite.
    """
    x, ref = _pair(x, ref)
    if torch.equal(x, ref):
        return 0.0
    mx, mr = x.mean(dim=0), ref.mean(dim=0)
    num, den = float((mx - mr).norm()), float(mr.norm())
    return num / den if den > 0 else num


def _centered_gram(a: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=0, keepdim=True)
    # n x n Gram rather than d x d covariance: n (probe size) is usually the smaller one.
    return a @ a.T


def linear_cka(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) with column centering.

    CKA = <Kx, Kr>_F / (|Kx|_F |Kr|_F) with Kx = Xc Xc^T. It is 1 for identical inputs and
    unchanged by rotating or uniformly scaling either one, so it measures change of the
    representation's geometry, not of its basis. A constant input (all rows equal) has no
    geometry: two constant inputs count as 1, one constant input as 0.
    """
    x, ref = _pair(x, ref)
    if torch.equal(x, ref):
        return 1.0
    kx, kr = _centered_gram(x), _centered_gram(ref)
    nx, nr = float(kx.norm()), float(kr.norm())
    if nx == 0.0 or nr == 0.0:
        return 1.0 if nx == nr else 0.0
    return min(max(float((kx * kr).sum()) / (nx * nr), 0.0), 1.0)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # |a|^2 + |b|^2 - 2ab: one matmul, fine for n ~ 1000; clamp the rounding negatives.
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min(0.0)


def rbf_bandwidth(ref: torch.Tensor) -> float:
    """Median heuristic: sigma = median pairwise distance between reference rows.

    Fixed once from X_0 and reused, so MMD values of later probes are comparable.
    Falls back to the mean positive distance, then to 1.0, when the median is 0
    (many duplicate rows, or a constant reference).
    """
    ref = _f64(ref)
    n = ref.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=ref.device)
    d = _sq_dists(ref, ref)[iu[0], iu[1]].sqrt()
    if d.numel() == 0:
        return 1.0
    med = float(d.median())
    if med > 0:
        return med
    pos = d[d > 0]
    return float(pos.mean()) if pos.numel() else 1.0


def mmd2_rbf(x: torch.Tensor, ref: torch.Tensor, bandwidth: float) -> float:
    """Squared MMD with kernel exp(-|a-b|^2 / (2 sigma^2)), BIASED (V-statistic).

    mean Kxx + mean Krr - 2 mean Kxr, diagonals included. Biased on purpose: it is the
    squared RKHS distance between the two empirical mean embeddings, so it is >= 0 and
    exactly 0 for identical sets (the unbiased estimate fluctuates around 0 and can go
    negative, which makes a poor drift series). Compares distributions: it ignores which
    row is which image.
    """
    x, ref = _pair(x, ref)
    if torch.equal(x, ref):
        return 0.0
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    g = -1.0 / (2.0 * bandwidth * bandwidth)
    kxx = torch.exp(g * _sq_dists(x, x)).mean()
    krr = torch.exp(g * _sq_dists(ref, ref)).mean()
    kxr = torch.exp(g * _sq_dists(x, ref)).mean()
    return max(float(kxx + krr - 2.0 * kxr), 0.0)


def active_fraction(x: torch.Tensor) -> float:
    """Fraction of entries > 0 (ReLU units that fire); 0 for an empty tensor."""
    if x.numel() == 0:
        return 0.0
    return float((x > 0).to(torch.float64).mean())
