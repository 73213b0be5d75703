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


def run_steps(mixer, x: torch.Tensor, state) -> tuple[torch.Tensor, object]:
    """``mixer.step`` over every position of ``x: (batch, length, d_model)``, from ``state``:
    the outputs stacked as ``(batch, length, d_model)`` and the final state."""
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state
