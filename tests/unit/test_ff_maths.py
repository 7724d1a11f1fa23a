"""Forward-Forward maths in pipeline/ff.py against values worked out by hand.

Every expected number below is computed in the test from first principles (math.log1p,
math.sqrt, explicit sums), never read back from the module under test.
"""

import math

import pytest
import torch

from pipeline.ff import (FFLayer, ff_loss, goodness, hard_wrong_labels, label_scores,
                         normalize, overlay, overlay_all, predict, random_wrong_labels)

pytestmark = pytest.mark.timeout(30)


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def close(got: torch.Tensor, expected) -> None:
    want = torch.tensor(expected, dtype=got.dtype)
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5, got.tolist()


def set_layer(layer: FFLayer, weight, bias) -> FFLayer:
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


# ---------------------------------------------------------------- goodness and loss

def test_goodness_sum_is_sum_of_squares_per_row():
    h = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0]])
    # 1 + 4 = 5;  9 + 1 = 10;  0
    assert goodness(h, "sum").tolist() == [5.0, 10.0, 0.0]


def test_goodness_mean_is_mean_of_squares_per_row():
    h = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert goodness(h, "mean").tolist() == [2.5, 5.0]


def test_ff_loss_is_batch_mean_of_two_softplus_terms():
    theta = 2.0
    g_pos, g_neg = [3.0, 1.0], [0.0, 2.0]
    # row 0: softplus(2-3) + softplus(0-2); row 1: softplus(2-1) + softplus(2-2)
    row0 = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-2.0))
    row1 = math.log1p(math.exp(1.0)) + math.log(2.0)
    expected = (row0 + row1) / 2
    got = ff_loss(torch.tensor(g_pos), torch.tensor(g_neg), theta)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ff_loss_is_small_when_positives_above_and_negatives_below_threshold():
    theta = 5.0
    good = ff_loss(torch.tensor([25.0]), torch.tensor([-15.0]), theta).item()
    bad = ff_loss(torch.tensor([-15.0]), torch.tensor([25.0]), theta).item()
    assert good == pytest.approx(2 * softplus(-20.0), rel=1e-4)
    assert bad == pytest.approx(2 * softplus(20.0), rel=1e-6)
    assert good < 1e-8 < 39.0 < bad


# ---------------------------------------------------------------- normalization

def test_rms_normalization_divides_by_root_mean_square():
    out = normalize(torch.tensor([[3.0, 4.0]]), "rms")
    r = math.sqrt((9 + 16) / 2)  # sqrt(12.5)
    assert out[0].tolist() == pytest.approx([3 / r, 4 / r], abs=1e-6)


def test_length_normalization_gives_direction_cosines():
    out = normalize(torch.tensor([[3.0, 4.0]]), "length")
    assert out[0].tolist() == pytest.approx([0.6, 0.8], abs=1e-6)


def test_none_normalization_leaves_input_unchanged():
    x = torch.tensor([[3.0, 4.0], [-1.0, 7.0]])
    assert torch.equal(normalize(x, "none"), x)


@pytest.mark.parametrize("mode", ["rms", "length", "none"])
def test_normalization_of_zero_row_is_zero_not_nan(mode):
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    out = normalize(x, mode)
    assert torch.isfinite(out).all()
    assert out[0].tolist() == [0.0, 0.0, 0.0]


def test_rms_output_has_unit_mean_square_and_length_output_has_unit_norm():
    x = torch.randn(16, 37, generator=torch.Generator().manual_seed(0)) * 50
    rms = normalize(x, "rms")
    length = normalize(x, "length")
    assert (rms ** 2).mean(dim=1).tolist() == pytest.approx([1.0] * 16, abs=1e-5)
    assert (length ** 2).sum(dim=1).tolist() == pytest.approx([1.0] * 16, abs=1e-5)


def test_unknown_normalization_raises():
    with pytest.raises(ValueError):
        normalize(torch.ones(1, 2), "l3")


# ---------------------------------------------------------------- label overlay

def test_overlay_writes_scaled_one_hot_in_first_columns_only():
    x = torch.arange(10, dtype=torch.float32).view(2, 5)  # [[0..4], [5..9]]
    out = overlay(x, torch.tensor([2, 0]), num_classes=3, strength=0.7)
    assert out[0].tolist() == pytest.approx([0.0, 0.0, 0.7, 3.0, 4.0])
    assert out[1].tolist() == pytest.approx([0.7, 0.0, 0.0, 8.0, 9.0])


def test_overlay_does_not_modify_its_input():
    x = torch.full((2, 5), 9.0)
    before = x.clone()
    overlay(x, torch.tensor([1, 2]), num_classes=3)
    overlay(x, None, num_classes=3)
    assert torch.equal(x, before)


def test_neutral_overlay_spreads_strength_evenly_over_label_positions():
    x = torch.full((2, 6), 5.0)
    out = overlay(x, None, num_classes=4, strength=0.8)
    assert out[:, :4].flatten().tolist() == pytest.approx([0.2] * 8)
    assert out[:, 4:].flatten().tolist() == [5.0] * 4


def test_overlay_all_rows_are_image_major_then_label():
    x = torch.tensor([[9.0, 9.0, 9.0, 1.0], [9.0, 9.0, 9.0, 2.0]])
    out = overlay_all(x, num_classes=3, strength=2.0)
    assert out.tolist() == [
        [2.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 2.0, 1.0],
        [2.0, 0.0, 0.0, 2.0], [0.0, 2.0, 0.0, 2.0], [0.0, 0.0, 2.0, 2.0],
    ]


# ---------------------------------------------------------------- negative labels

def test_random_wrong_labels_never_returns_the_true_label():
    g = torch.Generator().manual_seed(1)
    C, n = 10, 200_000
    labels = torch.randint(0, C, (n,), generator=g)
    wrong = random_wrong_labels(labels, C, generator=g)
    assert wrong.shape == labels.shape
    assert ((wrong >= 0) & (wrong < C)).all()
    assert (wrong != labels).all()


def test_random_wrong_labels_are_uniform_over_the_wrong_classes():
    g = torch.Generator().manual_seed(2)
    C, n, true = 10, 200_000, 3
    wrong = random_wrong_labels(torch.full((n,), true), C, generator=g)
    counts = torch.bincount(wrong, minlength=C).double()
    assert counts[true] == 0
    others = torch.cat([counts[:true], counts[true + 1:]])
    expected = n / (C - 1)
    chi2 = ((others - expected) ** 2 / expected).sum().item()
    # 8 degrees of freedom: mean 8, P(chi2 > 50) ~ 4e-8. A biased sampler (e.g. one
    # wrong class at 2x) gives chi2 in the thousands.
    assert chi2 < 50, counts.tolist()


def test_hard_wrong_labels_never_returns_true_label_even_when_it_scores_highest():
    g = torch.Generator().manual_seed(3)
    n, C = 20_000, 5
    labels = torch.randint(0, C, (n,), generator=g)
    scores = torch.zeros(n, C)
    scores[torch.arange(n), labels] = 1000.0  # truth dominates by far
    wrong = hard_wrong_labels(scores, labels, generator=g)
    assert (wrong != labels).all()
    # the other four are tied, so each gets about a quarter
    counts = torch.bincount(wrong, minlength=C).double() / n
    assert counts.tolist() == pytest.approx([0.2] * C, abs=0.015)


def test_hard_wrong_labels_follow_softmax_over_wrong_labels():
    g = torch.Generator().manual_seed(4)
    n = 40_000
    labels = torch.zeros(n, dtype=torch.long)
    row = torch.tensor([10.0, 5.0, 0.0, 0.0, 0.0])  # true label 0 scores highest
    wrong = hard_wrong_labels(row.expand(n, 5), labels, generator=g)
    z = math.exp(5.0) + 3 * math.exp(0.0)
    p1, p_other = math.exp(5.0) / z, 1.0 / z  # ~0.980 and ~0.0066
    freq = torch.bincount(wrong, minlength=5).double() / n
    assert freq[0] == 0
    assert freq[1].item() == pytest.approx(p1, abs=0.005)
    for c in (2, 3, 4):
        assert freq[c].item() == pytest.approx(p_other, abs=0.003)


def test_hard_wrong_labels_fall_back_to_uniform_when_every_wrong_score_is_minus_inf():
    g = torch.Generator().manual_seed(5)
    n = 3000
    labels = torch.full((n,), 2)
    scores = torch.full((n, 4), -math.inf)
    scores[:, 2] = 0.0
    wrong = hard_wrong_labels(scores, labels, generator=g)
    assert (wrong != 2).all()
    assert set(wrong.tolist()) == {0, 1, 3}


# ---------------------------------------------------------------- layer and inference

def test_fflayer_forward_is_relu_of_affine_map_of_rms_normalized_input():
    layer = set_layer(FFLayer(2, 3, "rms"), [[1.0, 0.0], [0.0, -1.0], [1.0, 1.0]],
                      [0.0, 0.5, -1.0])
    r = math.sqrt(12.5)
    a, b = 3 / r, 4 / r
    expected = [max(a, 0.0), max(-b + 0.5, 0.0), max(a + b - 1.0, 0.0)]
    assert expected[1] == 0.0  # the ReLU must clip this unit
    out = layer(torch.tensor([[3.0, 4.0]]))
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_fflayer_forward_uses_its_own_normalization_mode():
    w, bias = [[2.0, -1.0]], [0.1]
    x = torch.tensor([[3.0, 4.0]])
    length = set_layer(FFLayer(2, 1, "length"), w, bias)(x)
    none = set_layer(FFLayer(2, 1, "none"), w, bias)(x)
    assert length.item() == pytest.approx(2 * 0.6 - 0.8 + 0.1, abs=1e-6)
    assert none.item() == pytest.approx(2 * 3 - 4 + 0.1, abs=1e-6)


def hand_network():
    """C=3 labels, 2 pixels, normalization none, so scores are sums of squares by hand.

    layer 0: identity (5 -> 5); layer 1 (5 -> 3): unit j = relu(2*label_j + a_j) with
    a = (p, q, 0.5) for pixels (p, q).
    """
    l0 = set_layer(FFLayer(5, 5, "none"), torch.eye(5).tolist(), [0.0] * 5)
    l1 = set_layer(FFLayer(5, 3, "none"),
                   [[2, 0, 0, 1, 0], [0, 2, 0, 0, 1], [0, 0, 2, 0, 0]], [0.0, 0.0, 0.5])
    return [l0, l1]


# pixels (p, q) of three images, and their layer-1 goodness per candidate label:
#   (1, 0): c0 [3, 0, .5] -> 9.25   c1 [1, 2, .5] -> 5.25   c2 [1, 0, 2.5] -> 7.25
#   (0, 3): c0 [2, 3, .5] -> 13.25  c1 [0, 5, .5] -> 25.25  c2 [0, 3, 2.5] -> 15.25
#   (0, 0): c0 [2, 0, .5] -> 4.25   c1 [0, 2, .5] -> 4.25   c2 [0, 0, 2.5] -> 6.25
PIXELS = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
LAYER1_SCORES = [[9.25, 5.25, 7.25], [13.25, 25.25, 15.25], [4.25, 4.25, 6.25]]


def images(pixels: torch.Tensor, C: int = 3) -> torch.Tensor:
    return torch.cat([torch.full((len(pixels), C), 7.0), pixels], dim=1)  # label cols junk


@pytest.mark.parametrize("chunk", [1000, 2])
def test_label_scores_sum_goodness_of_layers_after_skip(chunk):
    scores = label_scores(hand_network(), images(PIXELS), 3, skip=1, chunk=chunk)
    close(scores, LAYER1_SCORES)


def test_label_scores_with_skip_zero_add_layer0_goodness():
    # layer 0 is the identity: goodness 1 + p^2 + q^2 for every candidate
    scores = label_scores(hand_network(), images(PIXELS), 3, skip=0)
    layer0 = [1 + p * p + q * q for p, q in PIXELS.tolist()]
    expected = [[s + g0 for s in row] for row, g0 in zip(LAYER1_SCORES, layer0)]
    close(scores, expected)


def test_label_scores_mean_goodness_divides_by_width():
    scores = label_scores(hand_network(), images(PIXELS), 3, skip=1, kind="mean")
    close(scores, [[s / 3 for s in r] for r in LAYER1_SCORES])


def test_predict_picks_label_with_highest_summed_goodness():
    assert predict(hand_network(), images(PIXELS), 3).tolist() == [0, 1, 2]


def test_predict_skip_decides_between_layer0_and_later_layers():
    """Layer 0 favours label 0, layer 1 favours label 1; skip picks which one counts.

    One image, C=2, one pixel p=1, strength 1, normalization none.
    layer 0 = diag(3, 1, 1):  label 0 -> [3, 0, 1] g=10;  label 1 -> [0, 1, 1] g=2
    layer 1 = [[0, 2, 0]]:    label 0 -> [0]       g=0;   label 1 -> [2]       g=4
    skip=0: label 0 = 10, label 1 = 6 -> 0.   skip=1: label 0 = 0, label 1 = 4 -> 1.
    """
    l0 = set_layer(FFLayer(3, 3, "none"), [[3, 0, 0], [0, 1, 0], [0, 0, 1]], [0.0] * 3)
    l1 = set_layer(FFLayer(3, 1, "none"), [[0, 2, 0]], [0.0])
    x = torch.tensor([[0.0, 0.0, 1.0]])
    assert label_scores([l0, l1], x, 2, skip=0).tolist() == [[10.0, 6.0]]
    assert label_scores([l0, l1], x, 2, skip=1).tolist() == [[0.0, 4.0]]
    assert predict([l0, l1], x, 2, skip=0).tolist() == [0]
    assert predict([l0, l1], x, 2, skip=1).tolist() == [1]


def test_label_scores_use_overlay_strength():
    # same network, label strength 2: layer 1 unit c gets 4 instead of 2 from the label
    #   (1, 0): c0 [5, 0, .5] -> 25.25  c1 [1, 4, .5] -> 17.25  c2 [1, 0, 4.5] -> 21.25
    scores = label_scores(hand_network(), images(PIXELS[:1]), 3, strength=2.0)
    close(scores, [[25.25, 17.25, 21.25]])
