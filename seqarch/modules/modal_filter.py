"""Modal (diagonal state-space) fits of long convolution filters: the distillation of Hyena.

Massaroli et al., "Laughing Hyena Distillery: Extracting Compact Recurrences From
Convolutions" (NeurIPS 2023): a trained Hyena filter ``h: (channels, length)`` is
replaced, per channel, by the impulse response of a diagonal complex SSM,

    h[c, t] ~ 2 Re(sum_n r[c, n] z[c, n]^t),   |z| < 1,

whose recurrence steps in O(modes) per token whatever the position.  The fit here:

1. two candidate sets of modes per channel: the poles of a Hankel (Ho-Kalman / Kung)
   realisation of the filter, and a grid of log-spaced decays and low-biased angles;
2. residues by (ridge) least squares with the modes fixed; each channel keeps the
   candidate set that fits it better;
3. a few Adam steps on modes and residues together (the relative L2 error of each
   channel, summed), then least squares for the residues of the refined modes; a
   channel keeps its refined fit only where it is better.

The Hankel poles alone usually fit a smooth implicit filter to ~1e-6; the refinement
is for filters far from low rank.  Cost: one SVD of a ``(length/2, length/2)`` Hankel
matrix per channel.

The modes stay stable throughout: ``|z| < 1`` (``z = exp(-exp(a) + i theta)`` under Adam).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import check_nonnegative_int, check_positive_int, check_real
from ..kernels.ssm_kernel import vandermonde_kernel


@dataclass(frozen=True)
class ModalFit:
    """A modal fit of ``channels`` filters.

    Attributes:
        log_z: complex ``(channels, modes)``, ``log z`` (real part negative).
        residues: complex ``(channels, modes)``.
        error: relative L2 error of the fitted filters, ``||fit - h|| / ||h||`` over all channels.
    """

    log_z: torch.Tensor
    residues: torch.Tensor
    error: float


def modal_filter(log_z: torch.Tensor, residues: torch.Tensor, length: int) -> torch.Tensor:
    """``2 Re(sum_n r z^t)`` for ``t < length``: real ``(channels, length)`` (the S4D Vandermonde kernel)."""
    return vandermonde_kernel(residues, log_z, check_positive_int("length", length))


def initial_modes(channels: int, modes: int, length: int) -> torch.Tensor:
    """``log z``: complex float64 ``(channels, modes)``.  Decays log-spaced from ``1 / length``
    (a mode that lasts the whole filter) to 0.5 per step; angles from 0 to pi, quadratically
    denser at low frequencies, where the smooth implicit filters have their energy."""
    k = torch.arange(modes, dtype=torch.float64)
    decay = torch.logspace(math.log10(1.0 / length), math.log10(0.5), modes, dtype=torch.float64)
    angle = math.pi * (k / modes) ** 2
    return torch.complex(-decay, angle).expand(channels, modes).clone()


def hankel_modes(h: torch.Tensor, modes: int) -> torch.Tensor:
    """``log z`` of a rank-``2 modes`` Hankel realisation of each filter (Kung's method):
    complex float64 ``(channels, modes)``, one mode per conjugate pair or real pole, the
    slowest kept when there are more, grid modes filling in when there are fewer; ``|z|``
    clamped into ``[1e-6, 1 - 1e-4]`` so every mode is stable."""
    channels, length = h.shape
    rows = max(2, length // 2)
    if length < 3:
        return initial_modes(channels, modes, length)
    index = torch.arange(rows)[:, None] + torch.arange(length - rows + 1)[None, :]
    left = torch.linalg.svd(h[:, index], full_matrices=False)[0]
    rank = min(2 * modes, rows - 1)
    basis = left[..., :rank]
    # The shift invariance of the observability basis: basis[1:] = basis[:-1] A.
    poles = torch.linalg.eigvals(torch.linalg.pinv(basis[:, :-1]) @ basis[:, 1:])
    grid = initial_modes(1, modes, length)[0]
    out = []
    for channel in poles:
        kept = channel[channel.imag >= 0]  # one of each conjugate pair, and the real poles
        kept = kept[torch.argsort(kept.abs(), descending=True)][:modes]
        magnitude = kept.abs().clamp(1e-6, 1 - 1e-4)
        log_z = torch.complex(torch.log(magnitude), torch.angle(kept))
        out.append(torch.cat([log_z, grid[len(log_z):]]))
    return torch.stack(out)


def fit_residues(log_z: torch.Tensor, h: torch.Tensor, ridge: float = 1e-10) -> torch.Tensor:
    """Residues minimising ``||2 Re(sum_n r z^t) - h||`` per channel for fixed modes (ridge least
    squares on the real design ``[2 Re z^t, -2 Im z^t]``): complex ``(channels, modes)``."""
    t = torch.arange(h.shape[-1], dtype=log_z.real.dtype, device=h.device)
    powers = torch.exp(log_z.unsqueeze(-2) * t[:, None])  # (channels, length, modes)
    design = torch.cat([2 * powers.real, -2 * powers.imag], dim=-1)
    gram = design.transpose(1, 2) @ design
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-300)
    gram = gram + ridge * scale[:, None, None] * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram, design.transpose(1, 2) @ h.unsqueeze(-1).to(gram.dtype))[..., 0]
    modes = log_z.shape[-1]
    return torch.complex(solution[..., :modes], solution[..., modes:])


def relative_error(fit: torch.Tensor, target: torch.Tensor) -> float:
    """``||fit - target|| / ||target||`` (0 for a zero target fitted exactly)."""
    return float((fit - target).norm() / target.norm().clamp_min(1e-300))


def _squared_errors(log_z: torch.Tensor, residues: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (modal_filter(log_z, residues, target.shape[-1]) - target).square().sum(-1)


def _pick(better: torch.Tensor, new: tuple, old: tuple) -> tuple:
    return tuple(torch.where(better[:, None], a, b) for a, b in zip(new, old))


def fit_modal(h: torch.Tensor, modes: int, *, steps: int = 20, lr: float = 1e-3) -> ModalFit:
    """Fit ``modes`` complex modes per channel to the filters ``h: (channels, length)``.

    Args:
        h: real ``(channels, length)`` filters (any float dtype; the fit runs in float64).
        modes: complex modes per channel (a real state of ``2 * modes``).
        steps: Adam steps refining modes and residues after the first least squares (0: none).
        lr: Adam's learning rate.
    Returns:
        a :class:`ModalFit`, ``error`` measured on ``h``.
    """
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or not h.is_floating_point() or h.numel() == 0:
        got = f"{h.dtype} of shape {tuple(h.shape)}" if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"h: expected a non-empty real (channels, length) tensor, got {got}")
    check_positive_int("modes", modes)
    check_nonnegative_int("steps", steps)
    check_real("lr", lr, low=0.0, expected="a positive number")
    target = h.detach().to(torch.float64)
    channels, length = target.shape
    grid = initial_modes(channels, modes, length).to(target.device)
    hankel = hankel_modes(target.cpu(), modes).to(target.device)
    log_z, residues = grid, fit_residues(grid, target)
    hankel_fit = (hankel, fit_residues(hankel, target))
    log_z, residues = _pick(_squared_errors(*hankel_fit, target) < _squared_errors(log_z, residues, target),
                            hankel_fit, (log_z, residues))
    if steps:
        log_rate = torch.log(-log_z.real).requires_grad_()
        angle = log_z.imag.clone().requires_grad_()
        coef = torch.view_as_real(residues).clone().requires_grad_()
        optimizer = torch.optim.Adam([log_rate, angle, coef], lr=lr)
        energy = target.square().sum(-1).clamp_min(1e-300)
        with torch.enable_grad():
            for _ in range(steps):
                fit = modal_filter(torch.complex(-torch.exp(log_rate), angle), torch.view_as_complex(coef), length)
                loss = ((fit - target).square().sum(-1) / energy).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        refined_z = torch.complex(-torch.exp(log_rate), angle).detach()
        refined = (refined_z, fit_residues(refined_z, target))  # the best residues for the refined modes
        better = _squared_errors(*refined, target) < _squared_errors(log_z, residues, target)
        log_z, residues = _pick(better, refined, (log_z, residues))
    return ModalFit(log_z, residues, relative_error(modal_filter(log_z, residues, length), target))
