"""Argument checks shared by every layer of seqarch: the ground floor.

Each check returns the value (converted where that is the point: ``check_real``
returns a float) or raises a ``ValueError`` whose message names the argument,
what was expected and what came, e.g. ``d_state: expected an even positive
integer, got 7``.  Wrong types are a ``ValueError`` too, not a ``TypeError``:
bad input is bad input, whatever is wrong with it.

This module imports nothing of seqarch, so any module (kernels' callers,
``modules/``, ``mixers/``, ``data/``, ``training/``) may use it without an
import cycle.  Argument names may be dotted paths (``data.seq_len``) so config
checks and layer checks read alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(argument: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an int (bools are not) in ``[minimum, maximum]`` (either bound may be None)."""
    if not _is_int(value):
        raise ValueError(f"{argument}: expected an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            bound = f">= {minimum}"
        elif minimum is None:
            bound = f"<= {maximum}"
        else:
            bound = f"in [{minimum}, {maximum}]"
        raise ValueError(f"{argument}: expected an integer {bound}, got {value}")
    return value


def check_positive_int(argument: str, value: Any) -> int:
    """``value`` if it is a positive int."""
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{argument}: expected a positive integer, got {value!r}")
    return value


def check_nonnegative_int(argument: str, value: Any) -> int:
    """``value`` if it is an int ``>= 0``."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{argument}: expected a non-negative integer, got {value!r}")
    return value


def check_even_positive_int(argument: str, value: Any, why: str = "") -> int:
    """``value`` if it is an even positive int; ``why`` (e.g. ``"conjugate pairs"``) goes in the message."""
    if not _is_int(value) or value <= 0 or value % 2:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{argument}: expected an even positive integer{reason}, got {value!r}")
    return value


def check_real(argument: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
               low_inclusive: bool = False, high_inclusive: bool = False, expected: str | None = None) -> float:
    """``value`` as a float if it is a finite real number in the range (open unless told otherwise)."""
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value >= low if low_inclusive else value > low)
    ok = ok and (value <= high if high_inclusive else value < high)
    if not ok:
        if expected is None:
            expected = f"a number in {'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{argument}: expected {expected}, got {value!r}")
    return float(value)


def check_positive_real(argument: str, value: Any) -> float:
    """``value`` as a float if it is a finite number ``> 0``."""
    return check_real(argument, value, low=0.0, expected="a positive number")


def check_dropout(value: Any, argument: str = "dropout") -> float:
    """A dropout probability in ``[0, 1)``."""
    return check_real(argument, value, low=0.0, high=1.0, low_inclusive=True, expected="a number in [0, 1)")


def check_bool(argument: str, value: Any) -> bool:
    """``value`` if it is a bool (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{argument}: expected a bool, got {value!r}")
    return value


def check_divides(argument: str, divisor: int, dividend_name: str, dividend: int) -> None:
    """Raise unless ``divisor`` (the value of ``argument``) divides ``dividend``."""
    if dividend % divisor != 0:
        raise ValueError(f"{argument}: expected a divisor of {dividend_name}={dividend}, got {divisor}")


def check_choice(argument: str, value: Any, choices: Sequence) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{argument}: expected one of {list(choices)}, got {value!r}")
    return value


def check_str(argument: str, value: Any) -> str:
    """``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{argument}: expected a non-empty string, got {value!r}")
    return value


def check_range_pair(argument: str, value: Any, *, what: str = "(low, high)") -> tuple[float, float]:
    """A pair of positive finite numbers with ``value[0] <= value[1]``, as floats."""
    ok = (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(_is_number(v) and 0 < v < math.inf for v in value)
        and value[0] <= value[1]
    )
    if not ok:
        raise ValueError(
            f"{argument}: expected a pair {what} of positive numbers with {what[1:-1].replace(', ', ' <= ')}, "
            f"got {value!r}"
        )
    return float(value[0]), float(value[1])


def check_odd_int(argument: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` if it is an odd int ``>= minimum``."""
    if not _is_int(value) or value < minimum or value % 2 == 0:
        raise ValueError(f"{argument}: expected an odd integer >= {minimum}, got {value!r}")
    return value


def check_seed(value: Any, argument: str = "seed") -> int:
    """A random seed: an int ``>= 0``."""
    return check_nonnegative_int(argument, value)
