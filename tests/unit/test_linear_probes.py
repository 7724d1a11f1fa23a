"""The linear probe behind `ffpipe compare`'s ensemble baselines."""

import torch

from pipeline.config import load_config
from pipeline.linear_probes import layer_features, random_layers, train_linear_probe


def _split(x, y, n_train):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_probe_reads_linearly_separable_classes_almost_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = 6 * torch.randn(4, 10, generator=g)
    y = torch.arange(800) % 4
    x = centres[y] + torch.randn(800, 10, generator=g)
    acc = train_linear_probe(*_split(x, y, 600), epochs=20, seed=0)
    assert acc > 0.97


def test_probe_on_random_labels_stays_near_chance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1600, 20, generator=g)
    y = torch.randint(0, 4, (1600,), generator=g)
    acc = train_linear_probe(*_split(x, y, 800), epochs=20, seed=0)
    assert abs(acc - 0.25) < 0.08


def test_probe_is_deterministic_for_a_seed():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g)
    assert train_linear_probe(*_split(x, y, 200), epochs=3, seed=5) == \
        train_linear_probe(*_split(x, y, 200), epochs=3, seed=5)


def test_layer_features_are_each_layers_normalized_output():
    cfg = load_config(None, [("model.layers", "64,32,16"), ("data.dataset", "synthetic")])
    x = torch.rand(50, 64)
    feats = layer_features(random_layers(cfg, seed=0), x, cfg, num_classes=10)
    assert [f.shape for f in feats] == [(50, 32), (50, 16)]
    for f in feats:  # rms normalization: every row has mean square 1
        torch.testing.assert_close(f.pow(2).mean(1), torch.ones(50), atol=1e-4, rtol=0)


def test_random_layers_repeat_for_a_seed_and_leave_the_global_rng_alone():
    cfg = load_config(None, [("model.layers", "64,32,16")])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = random_layers(cfg, seed=7), random_layers(cfg, seed=7)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(la.linear.weight, lb.linear.weight) for la, lb in zip(a, b))
    assert not torch.equal(a[0].linear.weight, random_layers(cfg, seed=8)[0].linear.weight)
