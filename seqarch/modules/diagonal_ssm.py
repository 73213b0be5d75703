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
from ..precision import compute_dtype
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
    # The state h is complex (batch, channels, d_state/2), stored as its real and imaginary parts
    # (torch.view_as_real: (..., 2) real): a compiled step's graph then has only real inputs and
    # outputs, and runs the recurrence in real arithmetic that inductor fuses into one loop (it
    # generates no code for complex operators, which it would run one by one, uncompiled); eager
    # steps read the same storage as complex, where PyTorch's complex kernels are the faster.
    def init_state(self, batch_size: int, *, device: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """``{"h": zeros (batch, channels, d_state // 2, 2)}``: the complex state's real and imaginary
        parts, in the real dtype of ``complex_dtype(dtype)``."""
        return {"h": torch.view_as_real(super().init_state(batch_size, device=device, dtype=dtype)["h"])}

    def real_h(self, state: dict, batch_size: int, work: torch.dtype) -> torch.Tensor:
        """The state's ``h`` as stored, ``(batch, channels, d_state // 2, 2)``, in the real dtype of
        ``complex_dtype(work)``; a ValueError if it is not the right tensor."""
        h = state.get("h")
        expected = (batch_size, self.channels, self.d_state // 2, 2)
        if not isinstance(h, torch.Tensor) or tuple(h.shape) != expected or not h.is_floating_point():
            got = (h.dtype, tuple(h.shape)) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"state: expected 'h' real of shape {expected} (a complex state's parts), got {got}")
        return h.to(compute_dtype(work))  # the parts of complex_dtype(work)

    def state_h(self, state: dict, batch_size: int, work: torch.dtype) -> torch.Tensor:
        """The state's ``h`` as complex ``(batch, channels, d_state // 2)`` in ``complex_dtype(work)``
        (a view of the stored parts where the dtype matches)."""
        return torch.view_as_complex(self.real_h(state, batch_size, work).contiguous())

    def step_matrices(self, work: torch.dtype) -> dict[str, torch.Tensor]:
        """``z, b_bar, 2 c`` of the causal recurrence, each complex ``(channels, d_state/2)``, and their
        real and imaginary parts (``"parts"``, real ``(6, channels, d_state/2)``) for the real-arithmetic
        step; computed once per parameter version outside training."""
        def compute():
            log_z, b_bar, c = self.discretize(work)
            z, c2 = torch.exp(log_z), 2 * c[0]
            parts = torch.stack([z.real, z.imag, b_bar.real, b_bar.imag, c2.real, c2.imag])
            return {"z": z, "b_bar": b_bar, "c2": c2, "parts": parts}
        return cached(self, ("step", work), compute)

    def step(self, u_t: torch.Tensor, state: dict, matrices: Any = None) -> tuple[torch.Tensor, dict]:
        """One token ``u_t: (rows, channels)``: ``h = z h + b_bar u_t``, output ``Re(2 c h)``."""
        work = u_t.dtype
        m = self.step_matrices(work) if matrices is None else matrices
        if not torch.compiler.is_compiling():
            h = torch.addcmul(m["z"] * self.state_h(state, u_t.shape[0], work), m["b_bar"], u_t.unsqueeze(-1))
            return (m["c2"] * h).sum(-1).real, {**state, "h": torch.view_as_real(h)}
        h_re, h_im = self.real_h(state, u_t.shape[0], work).unbind(-1)
        z_re, z_im, b_re, b_im, c_re, c_im = m["parts"]
        u = u_t.unsqueeze(-1)
        new_re = z_re * h_re - z_im * h_im + b_re * u
        new_im = z_re * h_im + z_im * h_re + b_im * u
        return (c_re * new_re - c_im * new_im).sum(-1), {**state, "h": torch.stack([new_re, new_im], -1)}

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
            return None, {**state, "h": torch.view_as_real(h)}
        h0 = self.state_h(state, u.shape[0], work)
        readout = vandermonde_kernel(c[0] * torch.exp(log_z) * h0, log_z, length)
        return readout, {**state, "h": torch.view_as_real(h + torch.exp(log_z * length) * h0)}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init!r}"
