"""Helpers shared by the test modules (``from helpers import relative_rms``)."""

from __future__ import annotations

import torch


def relative_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``rms(actual - expected) / rms(expected)``, computed in float64 (complex: on magnitudes).

    The one closeness measure of the suite: scale-free, so one tolerance serves
    every shape, and robust to a single large entry in a way a max-norm is not.
    """
    actual, expected = actual.detach(), expected.detach()
    wide = torch.complex128 if (actual.is_complex() or expected.is_complex()) else torch.float64
    actual, expected = actual.to(wide), expected.to(wide)
    return float((actual - expected).abs().pow(2).mean().sqrt() / expected.abs().pow(2).mean().sqrt().clamp_min(1e-300))
