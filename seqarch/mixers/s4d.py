"""S4D: the diagonal state-space layer, a configuration of the long-convolution shell.

Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal State
Space Models" (NeurIPS 2022): the kernel of
:class:`~seqarch.modules.diagonal_ssm.DiagonalSSMKernel` (ZOH-discretised diagonal SSM,
Vandermonde kernel) in the SSM layout of :class:`~seqarch.mixers.long_conv.LongConv`:
FFT convolution plus ``D x``, GELU, dropout, ``Linear(d, 2d)`` and a GLU.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..modules.diagonal_ssm import DiagonalSSMKernel
from ..modules.kernel_generator import DEFAULT_LR_SCALE
from .base import register_mixer
from .long_conv import LongConv


@register_mixer("s4d")
class S4D(LongConv):
    """Diagonal SSM layer (S4D).  ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: channels, each its own SSM.
        d_state: real state size N per channel (N/2 complex eigenvalues are stored).
        causal: ``False`` reads the SSM out forwards and backwards (two ``C``); no recurrent form.
        init: ``"lin"`` (S4D-Lin) or ``"inv"`` (S4D-Inv).
        dt_min, dt_max: range of the log-uniform step size initialisation.
        lr_scale: learning rate of ``A`` and ``dt`` as a multiple of the run's (``None``: the run's); no
            weight decay.
        dropout: after the activation.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "s4d": {"description": "S4D (diagonal state space, Gu et al. 2022) with a SwiGLU channel mixer",
                "channel_mixer": "glu"},
    }

    kernel_class = DiagonalSSMKernel

    def __init__(self, d_model: int, *, d_state: int = 64, causal: bool = True, init: str = "lin",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, lr_scale: float | None = DEFAULT_LR_SCALE,
                 dropout: float = 0.0, device: Any = None, dtype: torch.dtype | None = None,
                 layer_idx: int | None = None) -> None:
        kernel = {"d_state": d_state, "init": init, "dt_min": dt_min, "dt_max": dt_max, "lr_scale": lr_scale}
        super().__init__(d_model, kernel, causal=causal, dropout=dropout, device=device, dtype=dtype,
                         layer_idx=layer_idx)
        self.d_state = d_state
