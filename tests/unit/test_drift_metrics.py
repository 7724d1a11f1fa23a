"""Drift metrics: hand-computed values on tiny inputs, exact zero drift for identical
inputs, the invariances CKA promises, and no NaN on degenerate inputs."""

import math

import pytest
import torch

from pipeline.drift.metrics import (active_fraction, cosine_mean, linear_cka, mean_shift,
                                    mmd2_rbf, rbf_bandwidth)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# --- hand-computed values -----------------------------------------------------------

def test_cosine_mean_averages_per_row_cosines():
    # row 0: same direction -> 1; row 1: (0,1) vs (1,1) -> 1/sqrt(2)
    got = cosine_mean(t([[1, 0], [0, 1]]), t([[2, 0], [1, 1]]))
    assert got == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-12)


def test_cosine_mean_zero_rows_count_one_if_both_zero_else_zero_and_never_nan():
    # row 0: both zero -> 1; row 1: only ref zero -> 0; row 2: opposite -> -1
    got = cosine_mean(t([[0, 0], [1, 0], [1, 1]]), t([[0, 0], [0, 0], [-1, -1]]))
    assert got == pytest.approx((1 + 0 - 1) / 3, abs=1e-12)


def test_mean_shift_is_norm_of_mean_difference_over_norm_of_reference_mean():
    # mean(x) = (2, 3), mean(ref) = (1, 0): |(1, 3)| / |(1, 0)| = sqrt(10)
    got = mean_shift(t([[1, 2], [3, 4]]), t([[0, 0], [2, 0]]))
    assert got == pytest.approx(math.sqrt(10), abs=1e-12)


def test_mean_shift_with_zero_reference_mean_is_absolute_shift_not_inf():
    # mean(ref) = (0, 0): the ratio is undefined, the absolute shift |(3, 4)| = 5 is given
    assert mean_shift(t([[3, 4], [3, 4]]), t([[1, -1], [-1, 1]])) == pytest.approx(5.0)
    assert mean_shift(t([[1, -1], [-1, 1]]), t([[2, 2], [-2, -2]])) == 0.0


def test_linear_cka_of_one_feature_is_squared_correlation():
    # centered x = (-1, 0, 1), y = (-1, 1, 0): corr = 1 / (sqrt2 sqrt2) = 0.5 -> CKA 0.25
    got = linear_cka(t([[1], [2], [3]]), t([[1], [3], [2]]))
    assert got == pytest.approx(0.25, abs=1e-12)


def test_rbf_bandwidth_is_median_pairwise_distance():
    # points 0, 1, 3: distances 1, 3, 2 -> median 2
    assert rbf_bandwidth(t([[0], [1], [3]])) == pytest.approx(2.0, abs=1e-12)


def test_rbf_bandwidth_of_constant_reference_falls_back_to_one():
    assert rbf_bandwidth(t([[5, 5], [5, 5], [5, 5]])) == 1.0


def test_mmd2_rbf_single_points_is_two_minus_two_kernel():
    # k(0,0) + k(1,1) - 2 k(0,1) with sigma 1: 2 - 2 exp(-1/2)
    got = mmd2_rbf(t([[0]]), t([[1]]), bandwidth=1.0)
    assert got == pytest.approx(2 - 2 * math.exp(-0.5), abs=1e-12)


def test_mmd2_rbf_is_biased_v_statistic_with_diagonals():
    # x = {0, 1}, ref = {0, 2}, sigma 1, worked out by hand: (1 - exp(-1/2)) / 2
    got = mmd2_rbf(t([[0], [1]]), t([[0], [2]]), bandwidth=1.0)
    assert got == pytest.approx((1 - math.exp(-0.5)) / 2, abs=1e-12)


def test_mmd2_rbf_ignores_row_order_because_it_compares_distributions():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    assert mmd2_rbf(x.flip(0), x, bandwidth=1.0) == pytest.approx(0.0, abs=1e-12)


def test_active_fraction_counts_strictly_positive_entries():
    assert active_fraction(t([[1, -1], [0, 2]])) == 0.5


# --- identical inputs: exactly zero drift (the stage-0 property) ----------------------

def test_identical_inputs_give_exactly_zero_drift_not_rounding_noise():
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(1)).relu()
    same = x.clone()
    assert cosine_mean(same, x) == 1.0
    assert mean_shift(same, x) == 0.0
    assert linear_cka(same, x) == 1.0
    assert mmd2_rbf(same, x, rbf_bandwidth(x)) == 0.0


# --- invariances and guards ----------------------------------------------------------

def test_linear_cka_is_invariant_to_rotation_and_isotropic_scaling():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    xr = (x.double() @ q) * 3.7
    assert linear_cka(xr, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(xr, y) == pytest.approx(linear_cka(x, y), abs=1e-9)
    assert 0.0 <= linear_cka(x, y) < 0.9  # unrelated inputs are clearly not "the same"


def test_degenerate_inputs_never_give_nan():
    const, zeros = torch.full((5, 3), 2.0), torch.zeros(5, 3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    values = [linear_cka(const, x), linear_cka(const, const + 1), cosine_mean(zeros, x),
              mean_shift(x, zeros), mmd2_rbf(zeros, x, rbf_bandwidth(zeros)),
              active_fraction(torch.zeros(0, 3))]
    assert all(math.isfinite(v) for v in values)
    assert linear_cka(const, x) == 0.0  # a constant input has no geometry to share
    assert linear_cka(const, const + 1) == 1.0


def test_metrics_reject_mismatched_probe_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        cosine_mean(torch.zeros(4, 3), torch.zeros(5, 3))


def test_metrics_return_python_floats_in_float64_precision():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(4))
    y = x + 1e-4
    for v in (cosine_mean(x, y), mean_shift(x, y), linear_cka(x, y),
              mmd2_rbf(x, y, 1.0), active_fraction(x)):
        assert type(v) is float
    # float32 would round 1 - 1e-9 to 1; float64 keeps a tiny but nonzero drift visible.
    assert 0.0 < mmd2_rbf(x, y, 1.0) < 1e-6
