"""The closed-form FF step (`pipeline.ff_grad`) gives autograd's loss and gradients: for
both losses, both goodness kinds, every input normalization, with and without peer
normalization, and with a float16-style gradient scale."""

import pytest
import torch

from pipeline.ff import FFLayer, ff_loss, goodness, normalize, symba_loss
from pipeline.ff_grad import layer_step_grads


def autograd_step(layer, pos, neg, *, goodness_kind, loss, theta, alpha, peer_lambda,
                  peer_mean, grad_scale):
    """The textbook step: forward through the module, loss, backward."""
    layer.zero_grad(set_to_none=True)
    pre = layer.linear(normalize(torch.cat([pos, neg]), layer.normalization))
    h = torch.relu(pre)
    B = len(pos)
    g_pos, g_neg = goodness(h[:B], goodness_kind), goodness(h[B:], goodness_kind)
    value = symba_loss(g_pos, g_neg, alpha) if loss == "symba" else ff_loss(g_pos, g_neg, theta)
    new_mean = None
    if peer_lambda > 0:
        # The peer term sees the ReLU as the identity on the way back (straight-through),
        # so it reaches units that are off: relu(pre) forward, gradient 1 everywhere.
        through = pre + (h - pre).detach()
        m = 0.9 * peer_mean + 0.1 * through[:B].mean(dim=0)
        value = value + peer_lambda * (m - m.mean().detach()).pow(2).sum()
        new_mean = m.detach()
    (value * grad_scale).backward()
    return value.detach(), layer.linear.weight.grad, layer.linear.bias.grad, new_mean


@pytest.mark.parametrize("loss", ["ff", "symba"])
@pytest.mark.parametrize("goodness_kind", ["sum", "mean"])
@pytest.mark.parametrize("normalization", ["rms", "length", "none"])
@pytest.mark.parametrize("peer_lambda", [0.0, 0.3])
def test_gradients_match_autograd(loss, goodness_kind, normalization, peer_lambda):
    torch.manual_seed(0)
    d_in, d_out, B = 40, 30, 16
    layer = FFLayer(d_in, d_out, normalization)
    pos, neg = torch.randn(B, d_in), torch.randn(B, d_in) * 0.7
    theta = float(d_out) / (d_out if goodness_kind == "mean" else 1)
    peer_mean = torch.rand(d_out)
    kw = dict(loss=loss, theta=theta, alpha=2.0 / d_out, peer_lambda=peer_lambda,
              grad_scale=1.0)
    ref_loss, ref_w, ref_b, ref_mean = autograd_step(
        layer, pos, neg, goodness_kind=goodness_kind, peer_mean=peer_mean, **kw)
    s = layer_step_grads(layer.linear.weight, layer.linear.bias, pos, neg,
                         normalization=normalization, compute_dtype=None,
                         goodness=goodness_kind, peer_mean=peer_mean, **kw)
    # A nonzero gradient, so the comparison is not 0 == 0; tolerances relative to its size
    # (length-normalized inputs with mean goodness give gradients of ~1e-5).
    top = ref_w.abs().max()
    assert top > 0
    torch.testing.assert_close(s.loss, ref_loss)
    torch.testing.assert_close(s.grad_w, ref_w, rtol=1e-4, atol=1e-5 * top)
    torch.testing.assert_close(s.grad_b, ref_b, rtol=1e-4, atol=1e-5 * top)
    # The bound the cheap finite check relies on holds, here and in bfloat16.
    assert float(s.grad_w.abs().max()) <= float(s.grad_w_bound)
    low = layer_step_grads(layer.linear.weight, layer.linear.bias, pos, neg,
                           normalization=normalization, compute_dtype=torch.bfloat16,
                           goodness=goodness_kind, peer_mean=peer_mean, **kw)
    assert float(low.grad_w.abs().max()) <= float(low.grad_w_bound)
    if peer_lambda > 0:
        torch.testing.assert_close(s.peer_mean, ref_mean)
    else:
        assert s.peer_mean is None


def test_grad_scale_scales_gradients_not_the_loss():
    torch.manual_seed(1)
    layer = FFLayer(20, 12)
    pos, neg = torch.randn(8, 20), torch.randn(8, 20)
    kw = dict(normalization="rms", compute_dtype=None, goodness="sum", loss="ff",
              theta=12.0, alpha=1.0, peer_lambda=0.03, peer_mean=torch.zeros(12))
    one = layer_step_grads(layer.linear.weight, layer.linear.bias, pos, neg, **kw)
    big = layer_step_grads(layer.linear.weight, layer.linear.bias, pos, neg,
                           grad_scale=1024.0, **kw)
    torch.testing.assert_close(big.loss, one.loss)
    torch.testing.assert_close(big.grad_w, one.grad_w * 1024.0)
    torch.testing.assert_close(big.grad_b, one.grad_b * 1024.0)


def test_bfloat16_products_stay_close_to_float32():
    torch.manual_seed(2)
    layer = FFLayer(64, 48)
    pos, neg = torch.randn(32, 64), torch.randn(32, 64)
    kw = dict(normalization="rms", goodness="sum", loss="ff", theta=48.0, alpha=1.0)
    w, b = layer.linear.weight, layer.linear.bias
    f32 = layer_step_grads(w, b, pos, neg, compute_dtype=None, **kw)
    bf16 = layer_step_grads(w, b, pos, neg, compute_dtype=torch.bfloat16, **kw)
    assert bf16.grad_w.dtype == torch.float32 and bf16.h.dtype == torch.float32
    # bfloat16 keeps ~3 significant digits: relative error of the gradient a few 1e-3.
    rel = (bf16.grad_w - f32.grad_w).norm() / f32.grad_w.norm()
    assert rel < 2e-2


@pytest.mark.parametrize("normalization", ["rms", "none"])
def test_dropout_gradients_are_those_of_the_masked_input(normalization):
    """With dropout the step is the textbook step on normalize(x) * mask / (1 - p), the
    mask drawn from the generator it is given: the same seed, the same mask."""
    torch.manual_seed(2)
    d_in, d_out, B, p = 40, 30, 16, 0.25
    layer = FFLayer(d_in, d_out, normalization)
    pos, neg = torch.randn(B, d_in), torch.randn(B, d_in)
    s = layer_step_grads(layer.linear.weight, layer.linear.bias, pos, neg,
                         normalization=normalization, compute_dtype=None, goodness="sum",
                         loss="ff", theta=float(d_out), alpha=1.0, dropout=p,
                         generator=torch.Generator().manual_seed(7))
    mask = torch.empty(2 * B, d_in).bernoulli_(1 - p, generator=torch.Generator().manual_seed(7))
    assert 0 < int((mask == 0).sum()) < mask.numel()
    x = normalize(torch.cat([pos, neg]), normalization) * mask / (1 - p)
    h = torch.relu(layer.linear(x))
    ref = ff_loss(goodness(h[:B]), goodness(h[B:]), float(d_out))
    ref.backward()
    torch.testing.assert_close(s.loss, ref.detach())
    torch.testing.assert_close(s.grad_w, layer.linear.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s.grad_b, layer.linear.bias.grad, rtol=1e-4, atol=1e-6)
    assert float(s.grad_w.abs().max()) <= float(s.grad_w_bound)
