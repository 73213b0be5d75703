"""What the diagonal (S4D) and DPLR (S4) state-space kernels share.

Both run, per channel, a complex SSM on ``d_state // 2`` modes (one per conjugate
pair of the real ``d_state``-dimensional system) read out by ``2 Re(C h)``:

- a step size ``dt = exp(log_dt)``, drawn log-uniformly in ``[dt_min, dt_max]``
  (Gu, Goel, Ré, ICLR 2022; Gu, Gupta, Goel, Ré, NeurIPS 2022);
- eigenvalues with ``Re = -exp(log_a_real)``, so every mode stays stable however
  training moves the parameter;
- an output matrix ``C: (directions, channels, d_state // 2)``, one per direction
  (a bidirectional layer shares the SSM and reads it out twice);
- the state ``h: complex (batch, channels, d_state // 2)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..checks import check_even_positive_int, check_real
from ..precision import complex_dtype
from .kernel_generator import DEFAULT_LR_SCALE, KernelGenerator, check_lr_scale, check_param_dtype, tag_optim


def check_dt_range(dt_min: Any, dt_max: Any) -> tuple[float, float]:
    """``(dt_min, dt_max)`` as floats if ``0 < dt_min <= dt_max``."""
    dt_min = check_real("dt_min", dt_min, low=0.0, expected="a positive number")
    dt_max = check_real("dt_max", dt_max, low=0.0, expected="a positive number")
    if dt_max < dt_min:
        raise ValueError(f"dt_max: expected a value >= dt_min={dt_min}, got {dt_max}")
    return dt_min, dt_max


class SSMKernel(KernelGenerator):
    """Base of the SSM kernel generators; subclasses add the state matrix and the kernel.

    Args:
        channels: independent SSMs.
        eigenvalues: complex ``(channels, d_state // 2)`` initial eigenvalues (float64).
        d_state: real state size N (even).
        directions: 1 (causal) or 2 (two output matrices).
        dt_min, dt_max: range of the log-uniform initial step.
        lr_scale: learning rate of ``log_dt`` and the eigenvalues (and what subclasses
            tag) as a multiple of the run's; ``None``: the run's.  They never get weight decay.
        max_length: longest kernel (``None``: any).
    """

    recurrent = True

    def __init__(self, channels: int, eigenvalues: torch.Tensor, *, d_state: int, directions: int = 1,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, lr_scale: float | None = DEFAULT_LR_SCALE,
                 max_length: int | None = None, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(channels, directions=directions, max_length=max_length)
        self.d_state = check_even_positive_int("d_state", d_state, "conjugate pairs")
        self.dt_min, self.dt_max = check_dt_range(dt_min, dt_max)
        self.lr_scale = check_lr_scale(lr_scale)
        self.factory = {"device": device, "dtype": check_param_dtype(dtype) or torch.get_default_dtype()}
        half = d_state // 2
        log_dt = torch.rand(channels, dtype=torch.float64) * math.log(self.dt_max / self.dt_min) + math.log(self.dt_min)
        self.log_dt = self.parameter(log_dt)
        self.log_a_real = self.parameter(torch.log(-eigenvalues.real))
        self.a_imag = self.parameter(eigenvalues.imag)
        # Complex parameters live as real views (..., 2) so optimisers and .to(dtype) work.
        self.C = self.parameter(torch.view_as_real(torch.randn(directions, channels, half, dtype=torch.complex128)))
        tag_optim([self.log_dt, self.log_a_real, self.a_imag], self.lr_scale)

    def parameter(self, value: torch.Tensor) -> nn.Parameter:
        """A parameter drawn in float64 and cast once to the generator's device and dtype."""
        return nn.Parameter(value.clone().to(**self.factory))

    def eigenvalues(self, work: torch.dtype) -> torch.Tensor:
        """``Lambda = -exp(log_a_real) + i a_imag``: complex ``(channels, d_state // 2)``."""
        return torch.complex(-torch.exp(self.log_a_real.to(work)), self.a_imag.to(work))

    def step_size(self, work: torch.dtype) -> torch.Tensor:
        """``dt = exp(log_dt)``: ``(channels,)``."""
        return torch.exp(self.log_dt.to(work))

    def output_matrix(self, work: torch.dtype) -> torch.Tensor:
        """``C``: complex ``(directions, channels, d_state // 2)``."""
        return torch.view_as_complex(self.C.to(work).contiguous())

    # -- recurrence ---------------------------------------------------------------------
    def init_state(self, batch_size: int, *, device: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """``{"h": complex zeros (batch, channels, d_state // 2)}`` in ``complex_dtype(dtype)``."""
        return {"h": torch.zeros(batch_size, self.channels, self.d_state // 2, device=device,
                                 dtype=complex_dtype(dtype))}

    def state_h(self, state: dict, batch_size: int, work: torch.dtype) -> torch.Tensor:
        """The state's ``h`` in ``complex_dtype(work)``; a ValueError if it is not the right tensor."""
        h = state.get("h")
        expected = (batch_size, self.channels, self.d_state // 2)
        if not isinstance(h, torch.Tensor) or tuple(h.shape) != expected or not h.is_complex():
            got = (h.dtype, tuple(h.shape)) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"state: expected 'h' complex of shape {expected}, got {got}")
        return h.to(complex_dtype(work))

    def state_size(self) -> int:
        """``channels * d_state`` real numbers (``d_state // 2`` complex per channel)."""
        return self.channels * self.d_state

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, d_state={self.d_state}, directions={self.directions}, "
                f"dt_min={self.dt_min}, dt_max={self.dt_max}, lr_scale={self.lr_scale}, max_length={self.max_length}")
