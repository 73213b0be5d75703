"""Checks for the ``data:`` section of a config: every error names its key as ``data.<key>``.

Wrong types raise ValueError too (not TypeError), by the house rule for bad input.

``build_data`` resolves a task's options with :func:`resolve_options` and checks every value
before anything is generated or written, so a typo costs nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .. import checks

# Keys only some tasks take: a task without one says which do, not only that the key is unknown.
ONLY_SOME_TASKS = {
    "test_lengths": "only the synthetic lm tasks (mqar, selective_copy, induction) generate test sets at other "
                    "sequence lengths",
}


def resolve_options(task: str, spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``spec`` (less its ``task`` key); a key the task does not know is an error."""
    unknown = sorted(set(spec) - set(defaults) - {"task"})
    for key in unknown:
        if key in ONLY_SOME_TASKS:
            raise ValueError(f"data.{key}: task {task!r} cannot take it; {ONLY_SOME_TASKS[key]}, got {spec[key]!r}")
    if unknown:
        raise ValueError(
            f"data.{unknown[0]}: unknown key for task {task!r}; expected one of {', '.join(sorted(defaults))}, "
            f"got {unknown[0]!r}"
        )
    return {**defaults, **{key: value for key, value in spec.items() if key != "task"}}


def check_int(options: Mapping[str, Any], key: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``options[key]`` as an int in ``[minimum, maximum]`` (bools are not ints here)."""
    return checks.check_int(f"data.{key}", options[key], minimum=minimum, maximum=maximum)


def check_optional_int(options: Mapping[str, Any], key: str, *, minimum: int = 1) -> int | None:
    return None if options[key] is None else check_int(options, key, minimum=minimum)


def check_float(options: Mapping[str, Any], key: str, *, low: float, high: float, open_low: bool = False) -> float:
    """``options[key]`` as a float in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    bracket = "(" if open_low else "["
    return checks.check_real(f"data.{key}", options[key], low=low, high=high, low_inclusive=not open_low,
                             high_inclusive=True, expected=f"a number in {bracket}{low}, {high}]")


def check_str(options: Mapping[str, Any], key: str) -> str:
    return checks.check_str(f"data.{key}", options[key])


check_seed = checks.check_seed


def split_seed(seed: int, split: str) -> int:
    """A seed for one split, derived from the run's ``seed``: train and validation never share a stream,
    and neither collides with another run seed's split (a hash, not ``seed + offset``)."""
    digest = hashlib.sha256(f"seqarch.data:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
