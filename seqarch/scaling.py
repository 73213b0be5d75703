"""Power-law fits of loss against compute, ``loss(C) = a C^-b + e`` (Kaplan et al., 2020; Hoffmann et al.,
2022), and where two fitted curves cross. Plain Python (no numpy or scipy): the fits have a handful of points.

The fit: for a fixed exponent ``b`` the curve is linear in ``(a, e)``, so least squares gives them in
closed form (``e`` held at 0 when it would go negative, an irreducible loss below zero); the exponent is
the one of least squared error, found on a grid and refined by golden-section search. Compute is divided
by the points' geometric mean first, so the numbers stay near 1 whatever the FLOP range.

The interval of ``b`` is Jacobian-based (the delta method): ``b +- t(0.975, n - k) sqrt(s^2 [(J^T J)^-1]_bb)``
with ``J`` the derivatives of the curve at the points with respect to the ``k`` free parameters
(``a, b, e``, or ``a, b`` when ``e`` sits at 0), ``s^2`` the residual variance and ``t`` Student's quantile.
With no more points than parameters there is no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .checks import check_positive_real

_B_MAX = 4.0  # steeper than C^-4 is no loss curve
_GRID = 400


@dataclass(frozen=True)
class PowerLawFit:
    """``loss(C) = a C^-b + e``, stored as ``scale (C / c_ref)^-b + e`` (``a = scale c_ref^b``)."""

    scale: float
    b: float
    e: float
    c_ref: float
    b_interval: tuple[float, float] | None
    rms_residual: float
    points: int
    at_bound: bool = False  # b stopped at the search's upper bound: the points follow no power law there

    @property
    def a(self) -> float:
        return self.scale * self.c_ref ** self.b

    def __call__(self, compute: float) -> float:
        return self.scale * (compute / self.c_ref) ** -self.b + self.e

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "e": self.e, "b_interval": self.b_interval, "c_ref": self.c_ref,
                "rms_residual": self.rms_residual, "points": self.points, "at_bound": self.at_bound}


def _linear_fit(u: list[float], y: list[float]) -> tuple[float, float, float]:
    """``(scale, e, sse)`` of ``y ~ scale u + e`` with ``scale >= 0`` and ``e >= 0`` (the losses are positive)."""
    n = len(u)
    mu, my = sum(u) / n, sum(y) / n
    suu = sum((ui - mu) ** 2 for ui in u)
    scale = sum((ui - mu) * (yi - my) for ui, yi in zip(u, y)) / suu if suu > 0 else 0.0
    e = my - scale * mu
    if scale <= 0:  # loss that does not fall with compute: the flat line through the mean
        scale, e = 0.0, max(my, 0.0)
    elif e < 0:
        scale, e = max(sum(ui * yi for ui, yi in zip(u, y)) / sum(ui * ui for ui in u), 0.0), 0.0
    sse = sum((scale * ui + e - yi) ** 2 for ui, yi in zip(u, y))
    return scale, e, sse


def _profile(x: list[float], y: list[float], b: float) -> tuple[float, float, float]:
    return _linear_fit([xi ** -b for xi in x], y)


def _inverse(matrix: list[list[float]]) -> list[list[float]] | None:
    """Gauss-Jordan inverse of a small matrix; ``None`` when it is singular."""
    k = len(matrix)
    rows = [list(row) + [1.0 if i == j else 0.0 for j in range(k)] for i, row in enumerate(matrix)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-300:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        head = rows[col][col]
        rows[col] = [v / head for v in rows[col]]
        for r in range(k):
            if r != col and rows[r][col] != 0.0:
                factor = rows[r][col]
                rows[r] = [v - factor * w for v, w in zip(rows[r], rows[col])]
    return [row[k:] for row in rows]


def student_t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile (``0.5 < p < 1``) of Student's t with ``dof`` degrees of freedom: bisection on its
    CDF, integrated by Simpson's rule (exact enough for an interval's width)."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    density = lambda t: math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))

    def cdf(t: float, steps: int = 2000) -> float:
        h = t / steps
        total = density(0.0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + total * h / 3

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def fit_power_law(compute: list[float], loss: list[float]) -> PowerLawFit:
    """Least-squares ``loss = a C^-b + e`` (``a >= 0``, ``0 <= b <= 4``, ``e >= 0``) through at least three
    ``(compute, loss)`` points at two or more distinct computes. Losses that do not fall with compute give
    the constant fit ``a = b = 0``, ``e`` their mean."""
    if len(compute) != len(loss):
        raise ValueError(f"loss: expected one value per compute ({len(compute)}), got {len(loss)}")
    if len(compute) < 3:
        raise ValueError(f"compute: expected at least 3 points for 3 parameters, got {len(compute)}")
    for c, y in zip(compute, loss):
        check_positive_real("compute", c)
        if not math.isfinite(y):
            raise ValueError(f"loss: expected finite values, got {y}")
    if len(set(compute)) < 2:
        raise ValueError(f"compute: expected at least two distinct values, got {sorted(set(compute))}")
    c_ref = math.exp(sum(math.log(c) for c in compute) / len(compute))
    x = [c / c_ref for c in compute]
    grid = [_B_MAX * (i + 1) / _GRID for i in range(_GRID)]
    errors = [_profile(x, loss, b)[2] for b in grid]
    best = min(range(_GRID), key=errors.__getitem__)
    low, high = grid[max(best - 1, 0)] if best else 0.0, grid[min(best + 1, _GRID - 1)]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(80):  # the profile's error is smooth and unimodal between the grid neighbours
        m1, m2 = high - golden * (high - low), low + golden * (high - low)
        if _profile(x, loss, m1)[2] < _profile(x, loss, m2)[2]:
            high = m2
        else:
            low = m1
    b = max((low + high) / 2, 1e-12)
    scale, e, sse = _profile(x, loss, b)
    if scale == 0.0:  # no falling power law fits better than a constant: b = 0, and no interval
        return PowerLawFit(scale=0.0, b=0.0, e=e, c_ref=c_ref, b_interval=None,
                           rms_residual=math.sqrt(sse / len(x)), points=len(x))
    at_bound = b >= _B_MAX * (1 - 1e-6)  # no interval: the least squares lie beyond the bound
    return PowerLawFit(scale=scale, b=b, e=e, c_ref=c_ref,
                       b_interval=None if at_bound else _b_interval(x, scale, b, e, sse),
                       rms_residual=math.sqrt(sse / len(x)), points=len(x), at_bound=at_bound)


def _b_interval(x: list[float], scale: float, b: float, e: float, sse: float) -> tuple[float, float] | None:
    free_e = e > 0
    jacobian = [[xi ** -b, -scale * xi ** -b * math.log(xi)] + ([1.0] if free_e else []) for xi in x]
    dof = len(x) - len(jacobian[0])
    if dof <= 0:
        return None
    k = len(jacobian[0])
    normal = [[sum(row[i] * row[j] for row in jacobian) for j in range(k)] for i in range(k)]
    inverse = _inverse(normal)
    if inverse is None or inverse[1][1] < 0:
        return None
    half = student_t_quantile(0.975, dof) * math.sqrt(sse / dof * inverse[1][1])
    return b - half, b + half


def crossings(first: PowerLawFit, second: PowerLawFit, low: float, high: float, steps: int = 2000) -> list[float]:
    """The computes in ``[low, high]`` where the two curves are equal (sign changes of their difference on a
    log grid, refined by bisection); empty when one stays below the other."""
    check_positive_real("low", low)
    check_positive_real("high", high)
    if not low < high:
        return []
    diff = lambda log_c: first(math.exp(log_c)) - second(math.exp(log_c))
    a, z = math.log(low), math.log(high)
    knots = [a + (z - a) * i / steps for i in range(steps + 1)]
    values = [diff(k) for k in knots]
    found = []
    for (k0, v0), (k1, v1) in zip(zip(knots, values), zip(knots[1:], values[1:])):
        if v0 == 0:
            found.append(math.exp(k0))
        elif v0 * v1 < 0:
            for _ in range(60):
                mid = (k0 + k1) / 2
                if (diff(mid) < 0) == (v0 < 0):
                    k0 = mid
                else:
                    k1 = mid
            found.append(math.exp((k0 + k1) / 2))
    if values[-1] == 0:
        found.append(high)
    return found
