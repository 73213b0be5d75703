"""S4D: the diagonal state-space layer.

Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal State
Space Models" (NeurIPS 2022).  Each of the ``d_model`` channels runs its own SSM with
a diagonal complex state matrix ``A`` (``d_state / 2`` stored eigenvalues, their
conjugates implied), discretised by zero-order hold:

    z = exp(dt A),   B-bar = (z - 1) / A * B,   h_t = z h_{t-1} + B-bar x_t,
    y_t = 2 Re(C h_t) + D x_t

whose convolution kernel is the Vandermonde product
``K[h, l] = 2 Re(sum_n C[h,n] B-bar[h,n] z[h,n]^l)``.  The layer applies the SSM by
FFT convolution (causal: padded to 2L), then GELU and a GLU output projection, as
in the S4/S4D reference layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_choice, check_dropout, check_positive_int
from ..kernels.ssm_kernel import vandermonde_kernel
from ..modules.fft_conv import fft_conv_flops, ssm_conv
from ..modules.mlp import GLUOutput
from ..modules.vandermonde import decayed_sum, vandermonde_real_flops
from ..precision import complex_dtype, compute_dtype
from .base import Mixer, State, register_mixer

SSM_INITS = ("lin", "inv")


def s4d_eigenvalues(d_model: int, half_state: int, init: str) -> torch.Tensor:
    """Initial eigenvalues ``A`` as complex ``(d_model, half_state)`` (float64).

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
    return torch.complex(real, imag).expand(d_model, half_state).clone()


def _tag_optim(param: nn.Parameter, lr: float | None) -> nn.Parameter:
    """Mark an SSM parameter for its own optimizer group (no weight decay, own lr)."""
    param._optim = {"weight_decay": 0.0} if lr is None else {"lr": lr, "weight_decay": 0.0}
    return param


@register_mixer("s4d")
class S4D(Mixer):
    """Diagonal SSM layer (S4D).  ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: channels.
        d_state: real state size N per channel (N/2 complex eigenvalues are stored).
        causal: causal convolution; ``False`` runs a forward and a backward SSM
            (two sets of ``C``) and has no recurrent form.
        init: ``"lin"`` (S4D-Lin) or ``"inv"`` (S4D-Inv).
        dt_min, dt_max: range of the log-uniform step size initialisation.
        lr: learning rate hint for ``A`` and ``dt`` (``_optim`` attribute; ``None``: the
            optimizer's); they never get weight decay.
        dropout: after the activation.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        causal: bool = True,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        lr: float | None = 1e-3,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(d_model, causal=causal)
        check_positive_int("d_state", d_state)
        if d_state % 2:
            raise ValueError(f"d_state: expected an even number (conjugate pairs), got {d_state}")
        check_choice("init", init, SSM_INITS)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        check_dropout(dropout)
        # SSM parameters are drawn in float64, then cast: to the default dtype when none is given.
        factory = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        self.d_state = d_state
        self.init = init
        half = d_state // 2
        eig = s4d_eigenvalues(d_model, half, init)
        log_dt = torch.rand(d_model, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        n_directions = 1 if causal else 2
        c = torch.randn(n_directions, d_model, half, 2, dtype=torch.float64) * math.sqrt(0.5)
        self.log_dt = _tag_optim(nn.Parameter(log_dt.to(**factory)), lr)
        # Re(A) = -exp(log_a_real) stays negative, so the SSM stays stable under training.
        self.log_a_real = _tag_optim(nn.Parameter(torch.log(-eig.real).to(**factory)), lr)
        self.a_imag = _tag_optim(nn.Parameter(eig.imag.to(**factory)), lr)
        self.c = nn.Parameter(c.to(**factory))
        self.d_skip = nn.Parameter(torch.randn(d_model, **factory))
        self.output = GLUOutput(d_model, dropout=dropout, **factory)

    # -- the discretised SSM ----------------------------------------------------------
    def discretize(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_z, b_bar, c)`` in the complex dtype matching real ``dtype``.

        ``log_z = dt A``: ``(d_model, d_state/2)``; ``b_bar = (exp(dt A) - 1) / A``
        (``B = 1``); ``c``: ``(directions, d_model, d_state/2)``.
        """
        a = torch.complex(-torch.exp(self.log_a_real.to(dtype)), self.a_imag.to(dtype))
        log_z = torch.exp(self.log_dt.to(dtype)).unsqueeze(-1) * a
        b_bar = torch.expm1(log_z) / a
        c = torch.view_as_complex(self.c.to(dtype).contiguous())
        return log_z, b_bar, c

    def ssm_kernel(self, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The convolution kernel ``(directions, d_model, length)`` in ``dtype``."""
        log_z, b_bar, c = self.discretize(dtype)
        return vandermonde_kernel(c * b_bar, log_z, length)

    # -- parallel form ----------------------------------------------------------------
    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        """SSM convolution plus the skip: ``(batch, length, d_model)`` in compute dtype."""
        work = compute_dtype(x.dtype)
        u = x.to(work).transpose(1, 2)  # (batch, d_model, length)
        k = self.ssm_kernel(x.shape[1], work)
        y = ssm_conv(u, k)
        return (y + u * self.d_skip.to(work).unsqueeze(-1)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_sequence(x)
        return self.output(self._convolve(x)).to(x.dtype)

    # -- recurrent form ---------------------------------------------------------------
    def init_state(self, batch_size, *, device=None, dtype=None, max_length=None) -> State:
        """``{"h": complex (batch, d_model, d_state/2)}``; no length limit."""
        if not self.causal:
            return super().init_state(batch_size)
        check_positive_int("batch_size", batch_size)
        device, dtype = self._state_like(device, dtype)
        h = torch.zeros(batch_size, self.d_model, self.d_state // 2, device=device, dtype=complex_dtype(dtype))
        return {"batch_size": batch_size, "h": h}

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        work = compute_dtype(x_t.dtype)
        log_z, b_bar, c = self.discretize(work)
        u = x_t.to(work)
        h = torch.exp(log_z) * state["h"] + b_bar * u.unsqueeze(-1)
        y = 2 * (c[0] * h).sum(-1).real + self.d_skip.to(work) * u
        return self.output(y).to(x_t.dtype), {**state, "h": h}

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Parallel prompt: convolution for the outputs, a Vandermonde sum for the state."""
        fresh = state is None
        state = self.start_prefill(x, state)
        work = compute_dtype(x.dtype)
        log_z, b_bar, c = self.discretize(work)
        length = x.shape[1]
        y = self._convolve(x)
        u = x.to(work).transpose(1, 2)
        h = decayed_sum(u, log_z, b_bar)
        if not fresh:
            h0 = state["h"]
            # An incoming state h0 adds 2 Re(C z^(t+1) h0) at position t and decays to z^L h0.
            y = y + vandermonde_kernel(c[0] * torch.exp(log_z) * h0, log_z, length).transpose(1, 2)
            h = h + torch.exp(log_z * length) * h0
        return self.output(y).to(x.dtype), {**state, "h": h}

    # -- accounting -------------------------------------------------------------------
    def flops_breakdown(self, length: int) -> dict[str, int]:
        check_positive_int("length", length)
        directions = 1 if self.causal else 2
        half = self.d_state // 2
        conv_length = length if self.causal else 2 * length
        output = self.output.flops(length)
        return {
            "matmul": output["matmul"] + directions * vandermonde_real_flops(self.d_model, half, length),
            "fft": fft_conv_flops(conv_length, self.d_model, causal=self.causal),
            "other": output["other"] + 2 * length * self.d_model,  # plus the D skip
        }

    def state_size(self, length: int) -> int:
        """``d_model * d_state`` real numbers (``d_state / 2`` complex), whatever the length."""
        return self.d_model * self.d_state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, init={self.init!r}"
