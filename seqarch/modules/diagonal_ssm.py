"""The diagonal state-space kernel of S4D.

Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal State
Space Models" (NeurIPS 2022).  Each channel runs an SSM with a diagonal complex state
matrix ``A`` (``d_state / 2`` stored eigenvalues, their conjugates implied),
discretised by zero-order hold:

    z = exp(dt A),   B-bar = (z - 1) / A * B  (B = 1),   h_t = z h_{t-1} + B-bar u_t,
    y_t = 2 Re(C h_t)

whose convolution kernel is the Vandermonde product
``K[h, l] = 2 Re(sum_n C[h,n] B-bar[h,n] z[h,n]^l)``, exact at every length.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checks import check_choice, check_even_positive_int
from ..kernels.ssm_kernel import vandermonde_kernel
from .parameter_cache import cached
from .ssm import SSMKernel
from .vandermonde import decay_powers, decayed_sum, vandermonde_real_flops

SSM_INITS = ("lin", "inv")


def s4d_eigenvalues(channels: int, half_state: int, init: str) -> torch.Tensor:
    """Initial eigenvalues ``A`` as complex ``(channels, half_state)`` (float64).

    S4D-Lin: ``A_n = -1/2 + i pi n``.  S4D-Inv: ``A_n = -1/2 + i N/pi (N/(2n+1) - 1)``
    with ``N = 2 half_state``.
    """
    n = torch.arange(half_state, dtype=torch.float64)
    if init == "lin":
        imag = math.pi * n
    else:
        state = 2 * half_state
        imag = state / math.pi * (state / (2 * n + 1) - 1)
    real = torch.full_like(n, -0.5)
    return torch.complex(real, imag).expand(channels, half_state).clone()


class DiagonalSSMKernel(SSMKernel):
    """S4D kernel generator: ``forward(length) -> (directions, channels, length)``, any length.

    Args: those of :class:`~seqarch.modules.ssm.SSMKernel`, and ``init``: ``"lin"``
    (S4D-Lin) or ``"inv"`` (S4D-Inv).
    """

    def __init__(self, channels: int, *, d_state: int = 64, init: str = "lin", **options: Any) -> None:
        check_even_positive_int("d_state", d_state, "conjugate pairs")
        self.init = check_choice("init", init, SSM_INITS)
        super().__init__(channels, s4d_eigenvalues(channels, d_state // 2, init), d_state=d_state, **options)

    def discretize(self, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_z, b_bar, c)`` in the complex dtype matching real ``work``.

        ``log_z = dt A``: ``(channels, d_state/2)``; ``b_bar = (exp(dt A) - 1) / A``;
        ``c``: ``(directions, channels, d_state/2)``.
        """
        a = self.eigenvalues(work)
        log_z = self.step_size(work).unsqueeze(-1) * a
        return log_z, torch.expm1(log_z) / a, self.output_matrix(work)

    def forward(self, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        self.check_length(length)
        log_z, b_bar, c = self.discretize(self.work_dtype(dtype))
        return vandermonde_kernel(c * b_bar, log_z, length)

    def flops(self, length: int) -> dict[str, int]:
        """The Vandermonde products (``matmul``) and the discretisation (``other``)."""
        half = self.d_state // 2
        matmul = self.directions * vandermonde_real_flops(self.channels, half, length)
        return {"matmul": matmul, "fft": 0, "other": 30 * self.channels * half * (1 + self.directions)}

    # -- recurrence ---------------------------------------------------------------------
    def step_matrices(self, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z, b_bar, 2 c)`` of the causal recurrence, each complex ``(channels, d_state/2)``;
        computed once per parameter version outside training."""
        def compute():
            log_z, b_bar, c = self.discretize(work)
            return torch.exp(log_z), b_bar, 2 * c[0]
        return cached(self, ("step", work), compute)

    def step(self, u_t: torch.Tensor, state: dict, matrices: Any = None) -> tuple[torch.Tensor, dict]:
        work = u_t.dtype
        z, b_bar, c2 = self.step_matrices(work) if matrices is None else matrices
        h = torch.addcmul(z * self.state_h(state, u_t.shape[0], work), b_bar, u_t.unsqueeze(-1))
        return (c2 * h).sum(-1).real, {**state, "h": h}

    def prefill(self, u: torch.Tensor, state: dict, fresh: bool) -> tuple[torch.Tensor | None, dict]:
        """The final state by a blocked Vandermonde sum; an incoming ``h0`` adds
        ``2 Re(C z^(t+1) h0)`` to output ``t`` and decays to ``z^L h0``."""
        work, length = u.dtype, u.shape[-1]

        def compute():  # all from the parameters and the length: once per parameter version
            log_z, b_bar, c = self.discretize(work)
            return log_z, b_bar, c, decay_powers(log_z, length)
        log_z, b_bar, c, powers = cached(self, ("prefill", work, length), compute)
        h = decayed_sum(u, log_z, b_bar, powers)
        if fresh:
            return None, {**state, "h": h}
        h0 = self.state_h(state, u.shape[0], work)
        readout = vandermonde_kernel(c[0] * torch.exp(log_z) * h0, log_z, length)
        return readout, {**state, "h": h + torch.exp(log_z * length) * h0}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init!r}"
