"""Page-Hinkley: alarms soon after a level change, stays quiet on stationary noise,
re-arms after an alarm, and follows the standard recursion."""

import pytest
import torch

from pipeline.drift import PageHinkley


def noise(n: int, seed: int, mean: float = 0.0, std: float = 0.1) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (mean + std * torch.randn(n, generator=g, dtype=torch.float64)).tolist()


def first_alarm(ph: PageHinkley, series) -> int | None:
    for i, v in enumerate(series):
        if ph.update(v):
            return i
    return None


def test_statistic_follows_the_standard_recursion_by_hand():
    ph = PageHinkley(delta=0.1, threshold=100.0, min_samples=1)
    # x=1: mean 1, m = 1-1-0.1 = -0.1, min -0.1, PH 0
    ph.update(1.0)
    assert (ph.cum, ph.stat) == (pytest.approx(-0.1), pytest.approx(0.0))
    # x=3: mean 2, m = -0.1 + (3-2-0.1) = 0.8, min -0.1, PH 0.9
    ph.update(3.0)
    assert (ph.cum, ph.stat) == (pytest.approx(0.8), pytest.approx(0.9))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_up_alarms_within_three_steps_of_a_step_change(seed):
    ph = PageHinkley(delta=0.05, threshold=1.0, direction="up")
    change_at = 300
    series = noise(change_at, seed) + noise(100, seed + 100, mean=1.0)
    at = first_alarm(ph, series)
    assert at is not None and change_at <= at <= change_at + 3
    assert ph.alarms == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_stays_quiet_on_stationary_gaussian_noise(seed):
    for direction in ("up", "down"):
        ph = PageHinkley(delta=0.05, threshold=1.0, direction=direction)
        assert first_alarm(ph, noise(800, seed, mean=0.5)) is None
        assert ph.alarms == 0


def test_down_alarms_on_a_drop_but_not_on_a_rise():
    falling, rising = PageHinkley(0.05, 1.0, "down"), PageHinkley(0.05, 1.0, "down")
    assert first_alarm(falling, noise(200, 7, mean=1.0) + noise(50, 8, mean=0.0)) in range(
        200, 204)
    assert first_alarm(rising, noise(200, 7, mean=0.0) + noise(50, 8, mean=1.0)) is None


def test_resets_after_alarm_so_a_second_change_alarms_again():
    ph = PageHinkley(delta=0.05, threshold=1.0)
    series = noise(200, 9) + noise(200, 10, mean=1.0) + noise(200, 11, mean=2.0)
    steps = [i for i, v in enumerate(series) if ph.update(v)]
    assert len(steps) == 2 and ph.alarms == 2
    assert 200 <= steps[0] <= 203 and 400 <= steps[1] <= 403


def test_no_alarm_before_min_samples_even_on_a_huge_jump():
    ph = PageHinkley(delta=0.0, threshold=0.1, min_samples=5)
    assert [ph.update(v) for v in (0.0, 0.0, 100.0, 100.0)] == [False] * 4
    assert ph.update(100.0) is True  # fifth sample: now it may judge


def test_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        PageHinkley(0.1, 1.0, direction="sideways")
