"""LayerTrainer: one step equals a hand-written FF loss + SGD update; schedule; state.

The reference loss below is written out with log1p/exp and differentiated by autograd on
separate leaf tensors, so it shares no code with pipeline.ff beyond torch itself.
"""

import copy

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.layer_trainer import LayerTrainer, lr_gain

pytestmark = pytest.mark.timeout(30)

LR = 0.1


def sgd_config(*extra):
    return load_config(None, [("model.layers", "4,3,2"), ("train.optimizer", "sgd"),
                              ("train.momentum", "0"), ("train.lr", str(LR)),
                              ("train.lr_schedule", "constant"),
                              ("train.precision", "fp32"),  # exact float32 maths
                              ("model.threshold_scale", "1"), *extra])  # theta = width


def batch(seed: int, n: int = 5, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def manual_loss(W, b, pos, neg, theta):
    """FF loss written out: rms-normalize, affine, relu, sum of squares, log(1+e^z)."""
    def good(x):
        xn = x / torch.sqrt((x * x).mean(dim=1, keepdim=True))
        h = torch.clamp(xn @ W.t() + b, min=0.0)
        return (h * h).sum(dim=1), h
    g_pos, h_pos = good(pos)
    g_neg, h_neg = good(neg)
    loss = (torch.log1p(torch.exp(theta - g_pos)) + torch.log1p(torch.exp(g_neg - theta)))
    return loss.mean(), h_pos, h_neg


def reference_step(tr: LayerTrainer, pos, neg, theta, lr):
    W = tr.layer.linear.weight.detach().clone().requires_grad_(True)
    b = tr.layer.linear.bias.detach().clone().requires_grad_(True)
    loss, h_pos, h_neg = manual_loss(W, b, pos, neg, theta)
    gW, gb = torch.autograd.grad(loss, [W, b])
    return (W.detach() - lr * gW, b.detach() - lr * gb, loss.item(),
            h_pos.detach(), h_neg.detach())


def test_threshold_defaults_to_each_layers_width_for_sum_goodness():
    cfg = sgd_config()
    assert cfg.thresholds() == [3.0, 2.0]  # layers 4,3,2 -> widths 3 and 2
    assert LayerTrainer(0, cfg).theta == 3.0
    assert LayerTrainer(1, cfg).theta == 2.0


def test_threshold_scale_multiplies_the_width_or_the_mean_goodness_threshold():
    cfg = sgd_config(("model.threshold_scale", "0.25"))
    assert cfg.thresholds() == [0.75, 0.5]
    assert LayerTrainer(1, cfg).theta == 0.5
    mean = sgd_config(("model.goodness", "mean"), ("model.threshold_scale", "0.5"))
    assert mean.thresholds() == [0.5, 0.5]
    with pytest.raises(ConfigError, match="threshold_scale"):
        sgd_config(("model.threshold_scale", "0"))


def test_threshold_is_one_for_mean_goodness_and_explicit_values_win():
    assert sgd_config(("model.goodness", "mean")).thresholds() == [1.0, 1.0]
    assert sgd_config(("model.threshold", "5,7.5"),
                      ("model.threshold_scale", "0")).thresholds() == [5.0, 7.5]
    cfg = sgd_config(("model.threshold", "5,7.5"))
    assert LayerTrainer(0, cfg).theta == 5.0
    assert LayerTrainer(1, cfg).theta == 7.5


def test_train_step_matches_hand_written_loss_and_sgd_update():
    torch.manual_seed(0)
    tr = LayerTrainer(0, sgd_config())
    pos, neg = batch(1)
    W1, b1, loss, _, _ = reference_step(tr, pos, neg, theta=3.0, lr=LR)
    _, _, stats = tr.train_step(pos, neg, progress=0.0)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert torch.allclose(tr.layer.linear.weight, W1, atol=1e-6)
    assert torch.allclose(tr.layer.linear.bias, b1, atol=1e-6)


def test_train_step_changes_weights_by_exactly_lr_times_gradient():
    torch.manual_seed(1)
    tr = LayerTrainer(0, sgd_config())
    pos, neg = batch(2)
    W0 = tr.layer.linear.weight.detach().clone()
    W1, _, _, _, _ = reference_step(tr, pos, neg, theta=3.0, lr=LR)
    tr.train_step(pos, neg, progress=0.0)
    delta = tr.layer.linear.weight.detach() - W0
    assert delta.abs().max() > 1e-4  # something was learned
    assert torch.allclose(delta, W1 - W0, atol=1e-6)


def test_train_step_stats_report_mean_goodness_of_pos_and_neg():
    torch.manual_seed(2)
    tr = LayerTrainer(0, sgd_config())
    pos, neg = batch(3)
    _, _, _, h_pos, h_neg = reference_step(tr, pos, neg, 3.0, LR)
    _, _, stats = tr.train_step(pos, neg, progress=0.0)
    assert stats["g_pos"] == pytest.approx((h_pos ** 2).sum(1).mean().item(), rel=1e-5)
    assert stats["g_neg"] == pytest.approx((h_neg ** 2).sum(1).mean().item(), rel=1e-5)


def test_linear_decay_scales_the_sgd_step_in_the_second_half():
    torch.manual_seed(3)
    tr = LayerTrainer(0, sgd_config(("train.lr_schedule", "linear-decay")))
    pos, neg = batch(4)
    # progress 0.75: gain 2 * (1 - 0.75) = 0.5
    W1, _, _, _, _ = reference_step(tr, pos, neg, 3.0, LR * 0.5)
    tr.train_step(pos, neg, progress=0.75)
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(LR * 0.5)
    assert torch.allclose(tr.layer.linear.weight, W1, atol=1e-6)


def test_peer_normalization_adds_lambda_times_spread_of_running_mean():
    torch.manual_seed(4)
    lam = 0.5
    tr = LayerTrainer(0, sgd_config(("train.peer_lambda", str(lam))))
    pos, neg = batch(5)
    _, _, ff, h_pos, _ = reference_step(tr, pos, neg, 3.0, LR)
    m = 0.1 * h_pos.mean(dim=0)  # running mean starts at zero
    peer = ((m - m.mean()) ** 2).sum().item()
    _, _, stats = tr.train_step(pos, neg, progress=0.0)
    assert peer > 0
    assert stats["loss"] == pytest.approx(ff + lam * peer, rel=1e-5)


def test_version_counts_optimizer_steps():
    tr = LayerTrainer(1, sgd_config())
    assert tr.version == 0
    pos, neg = batch(6, d=3)
    for expected in (1, 2, 3):
        tr.train_step(pos, neg, progress=0.0)
        assert tr.version == expected
    tr.forward(pos)  # inference is not an update
    assert tr.version == 3


def test_train_step_outputs_are_rms_normalized_detached_pre_update_activities():
    torch.manual_seed(5)
    tr = LayerTrainer(0, sgd_config())
    pos, neg = batch(7, n=8)
    _, _, _, h_pos, h_neg = reference_step(tr, pos, neg, 3.0, LR)
    out_pos, out_neg, _ = tr.train_step(pos, neg, progress=0.0)
    assert not out_pos.requires_grad and not out_neg.requires_grad
    for out, h in ((out_pos, h_pos), (out_neg, h_neg)):
        rms = h.pow(2).mean(dim=1, keepdim=True).sqrt()
        live = rms.squeeze(1) > 0
        assert live.any()
        assert torch.allclose(out[live], (h / rms)[live], atol=1e-5)
        assert torch.allclose(out[live].pow(2).mean(dim=1), torch.ones(int(live.sum())),
                              atol=1e-5)
        assert (out[~live] == 0).all()


def test_lr_gain_is_one_in_first_half_then_linear_to_near_zero():
    for p in (0.0, 0.25, 0.49, 0.5):
        assert lr_gain("linear-decay", p) == pytest.approx(1.0)
    assert lr_gain("linear-decay", 0.75) == pytest.approx(0.5)
    assert lr_gain("linear-decay", 0.9) == pytest.approx(0.2)
    end = lr_gain("linear-decay", 1.0)
    assert 0 <= end < 0.05
    gains = [lr_gain("linear-decay", i / 100) for i in range(50, 101)]
    assert all(a >= b for a, b in zip(gains, gains[1:]))  # never goes back up


def test_lr_gain_constant_schedule_is_always_one():
    assert [lr_gain("constant", p) for p in (0.0, 0.5, 0.9, 1.0)] == [1.0] * 4


def test_state_dict_round_trip_restores_weights_optimizer_and_version():
    cfg = load_config(None, [("model.layers", "4,3,2"), ("train.lr_schedule", "constant")])
    torch.manual_seed(6)
    a = LayerTrainer(0, cfg)  # adam: has per-parameter state worth restoring
    for seed in (8, 9):
        a.train_step(*batch(seed), progress=0.0)
    state = copy.deepcopy(a.state_dict())

    torch.manual_seed(7)
    b = LayerTrainer(0, cfg)
    assert not torch.equal(a.layer.linear.weight, b.layer.linear.weight)
    b.load_state_dict(state)
    assert b.version == 2
    for k, v in a.layer.state_dict().items():
        assert torch.equal(v, b.layer.state_dict()[k])
    sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) == 2
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[k][name], sb[k][name])
    # the restored optimizer continues exactly as the original would
    pos, neg = batch(10)
    a.train_step(pos, neg, progress=0.0)
    b.train_step(pos, neg, progress=0.0)
    assert torch.equal(a.layer.linear.weight, b.layer.linear.weight)
    assert b.version == 3


def test_load_state_dict_rejects_a_checkpoint_of_another_shape():
    cfg = sgd_config()
    state = LayerTrainer(1, cfg).state_dict()
    with pytest.raises(ConfigError, match="shape"):
        LayerTrainer(0, cfg).load_state_dict(state)


def test_dropout_masks_are_seeded_per_layer_and_resume_where_they_left_off():
    """Two trainers of one layer draw the same masks (lockstep and a pipelined stage stay
    twins); a trainer restored from a checkpoint draws the masks the original would have
    drawn next, so a resumed run continues the same run."""
    cfg = load_config(None, [("model.layers", "6,5,4"), ("train.dropout", "0.5"),
                             ("train.precision", "fp32")])
    a, b = LayerTrainer(0, cfg), LayerTrainer(0, cfg)
    for seed in (1, 2):
        a.train_step(*batch(seed, d=6), progress=0.0)
        b.train_step(*batch(seed, d=6), progress=0.0)
    assert torch.equal(a.layer.linear.weight, b.layer.linear.weight)
    c = LayerTrainer(0, cfg)
    c.load_state_dict(copy.deepcopy(a.state_dict()))
    outs = [t.train_step(*batch(3, d=6), progress=0.0)[0] for t in (a, c)]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(a.layer.linear.weight, c.layer.linear.weight)
    # ... and the masks matter: without the restored generator state the step differs.
    d = LayerTrainer(0, cfg)
    state = copy.deepcopy(b.state_dict())
    del state["dropout_rng"]
    d.load_state_dict(state)
    assert not torch.equal(d.train_step(*batch(3, d=6), progress=0.0)[0], outs[0])
