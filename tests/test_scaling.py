"""Power-law fits of loss against compute, their intervals, and crossings of fitted curves."""

import math
import random

import pytest

from seqarch.scaling import PowerLawFit, crossings, fit_power_law, student_t_quantile

COMPUTE = [1e8 * 10 ** (i / 2) for i in range(9)]  # 1e8 .. 1e12


def curve(a, b, e):
    return [a * c ** -b + e for c in COMPUTE]


@pytest.mark.parametrize(("a", "b", "e"), [(2000.0, 0.25, 1.0), (40.0, 0.08, 0.0), (1e5, 0.5, 2.5)])
def test_fit_recovers_exact_power_laws(a, b, e):
    fit = fit_power_law(COMPUTE, curve(a, b, e))
    assert fit.b == pytest.approx(b, rel=1e-6)
    assert fit.a == pytest.approx(a, rel=1e-4)
    assert fit.e == pytest.approx(e, abs=1e-6)
    assert fit.rms_residual < 1e-8
    assert fit(3e9) == pytest.approx(a * 3e9 ** -b + e, rel=1e-9)


def test_fit_with_noise_recovers_the_exponent_within_its_interval():
    rng = random.Random(0)
    covered = 0
    for _ in range(20):
        noisy = [y * (1 + 0.01 * rng.gauss(0, 1)) for y in curve(2000.0, 0.25, 1.0)]
        fit = fit_power_law(COMPUTE, noisy)
        assert abs(fit.b - 0.25) < 0.06
        low, high = fit.b_interval
        assert low < fit.b < high
        covered += low <= 0.25 <= high
    assert covered >= 16  # a 95% interval covers the truth in most of 20 draws


def test_more_noise_gives_a_wider_interval():
    rng = random.Random(1)
    widths = []
    for sigma in (0.002, 0.02):
        fit = fit_power_law(COMPUTE, [y * (1 + sigma * rng.gauss(0, 1)) for y in curve(2000.0, 0.25, 1.0)])
        widths.append(fit.b_interval[1] - fit.b_interval[0])
    assert widths[1] > 3 * widths[0]


def test_a_loss_that_does_not_fall_gets_the_constant_fit_and_no_interval():
    fit = fit_power_law([1e9, 2e9, 4e9], [4.7, 4.6, 5.0])
    assert fit.a == 0 and fit.b == 0 and fit.e == pytest.approx(4.7666, abs=1e-3)
    assert fit.b_interval is None
    # Three points, three free parameters: an exact fit, no interval either.
    assert fit_power_law(COMPUTE[:3], curve(2000.0, 0.25, 1.0)[:3]).b_interval is None


def test_a_drop_then_a_plateau_stops_at_the_bound_without_an_interval():
    fit = fit_power_law([1e9, 2e9, 4e9, 8e9], [2.69, 2.56, 2.59, 2.57])
    assert fit.at_bound and fit.b == pytest.approx(4.0) and fit.b_interval is None
    assert not fit_power_law(COMPUTE, curve(2000.0, 0.25, 1.0)).at_bound


def test_student_t_quantiles():
    assert student_t_quantile(0.975, 1) == pytest.approx(12.706, abs=2e-3)
    assert student_t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert student_t_quantile(0.975, 200) == pytest.approx(1.972, abs=1e-3)


def law(a, b, e):
    return PowerLawFit(scale=a, b=b, e=e, c_ref=1.0, b_interval=None, rms_residual=0.0, points=3)


def test_crossing_of_known_curves():
    # 10 C^-0.5 + 1 and 1 C^-0.25 + 1 meet where C^0.25 = 10: C = 1e4.
    steep, shallow = law(10.0, 0.5, 1.0), law(1.0, 0.25, 1.0)
    (found,) = crossings(steep, shallow, 1.0, 1e8)
    assert found == pytest.approx(1e4, rel=1e-6)
    assert crossings(steep, shallow, 1e5, 1e8) == []  # outside the range: none
    # A falling curve against a constant.
    first, second = law(1.0, 0.5, 0.0), law(0.0, 0.0, 0.1)  # C^-0.5 against the constant 0.1: C = 100
    assert crossings(first, second, 1.0, 1e4) == [pytest.approx(100.0, rel=1e-6)]


@pytest.mark.parametrize(
    ("compute", "loss", "message"),
    [([1.0, 2.0], [1.0, 0.5], "at least 3 points"), ([1.0, 2.0, 3.0], [1.0, 0.5], "one value per compute"),
     ([1.0, 0.0, 3.0], [1.0, 0.5, 0.2], "compute"), ([2.0, 2.0, 2.0], [1.0, 0.5, 0.2], "two distinct"),
     ([1.0, 2.0, 3.0], [1.0, math.nan, 0.2], "finite")],
)
def test_bad_points_raise(compute, loss, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(compute, loss)
