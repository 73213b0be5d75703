"""Means over seeds with Student-t confidence intervals, exact, without scipy.

A comparison trained with ``train.seeds: [0, 1, 2]`` reports each architecture as ``mean +- h``:
``h = t_{(1 + c) / 2, n - 1} * s / sqrt(n)`` (``s`` the sample standard deviation of the ``n`` seeds,
``c`` the confidence, 0.95 by default). The t quantile inverts the t distribution function, written
with the regularised incomplete beta function (Abramowitz & Stegun 26.7.1; the continued fraction of
26.5.8 evaluated by the modified Lentz method), to about 1e-12.

The report's helpers read a compared architecture's :class:`seqarch.training.result.RunResult` and its
``seed_runs``: :func:`seed_interval`, :func:`memorisation_gap` (flagged above :data:`MEMORISATION_GAP`) and
:func:`history_band` (the error bars of the metric-against-FLOPs plot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..checks import check_positive_int, check_real


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (A&S 26.5.8), converging fast for ``x < (a + 1) / (a + b + 2)``."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the regularised incomplete beta function, for ``a, b > 0`` and ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The ``p``-quantile of Student's t with ``df`` degrees of freedom (``t_quantile(0.975, 2) = 4.3027``)."""
    df = check_positive_int("df", df)
    p = check_real("p", p, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False,
                   expected="a probability in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # bracket, then bisect: t_cdf is increasing
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Interval:
    """``mean +- half_width`` over ``n`` values at ``confidence``; ``half_width`` is None for one value."""

    mean: float
    half_width: float | None
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        return f"{self.mean:.4f}" if self.half_width is None else f"{self.mean:.4f} ± {self.half_width:.4f}"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with its two-sided Student-t interval (none for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values: expected at least one value, got none")
    confidence = check_real("confidence", confidence, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False,
                            expected="a probability in (0, 1)")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, None, 1, confidence)
    deviation = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t_quantile((1.0 + confidence) / 2.0, n - 1) * deviation / math.sqrt(n), n, confidence)


# A run's accuracy on examples it trained on above its validation accuracy by more than this is flagged as
# memorisation (a finite training set read for many epochs); fresh data stays within sampling noise of it.
MEMORISATION_GAP = 0.05


def seed_interval(result, attribute: str, confidence: float = 0.95) -> Interval | None:
    """``attribute`` (``final``, ``best``, ``test``, ``train_final``) of a compared architecture over its seeds
    (``result.seed_runs``; the result itself where it has none); ``None`` when no seed measured it."""
    runs = result.seed_runs or [result]
    values = [getattr(run, attribute) for run in runs if run.failure is None and getattr(run, attribute) is not None]
    return mean_interval(values, confidence) if values else None


def memorisation_gap(result) -> float | None:
    """Training-example accuracy minus validation accuracy at the end (means over seeds); ``None`` when
    either is missing."""
    if result.train_final is None or result.final is None:
        return None
    return result.train_final - result.final


def history_band(result, metric: str) -> list[tuple[float, Interval]]:
    """``(training FLOPs, interval over seeds)`` per evaluation step that every successful seed reached."""
    runs = [run for run in (result.seed_runs or [result]) if run.failure is None and run.history]
    if not runs:
        return []
    by_step = [{h["step"]: h for h in run.history if metric in h} for run in runs]
    steps = sorted(set.intersection(*(set(steps) for steps in by_step)))
    return [(by_step[0][step]["training_flops"], mean_interval([steps_of[step][metric] for steps_of in by_step]))
            for step in steps]
