"""S4: the structured state-space layer, a configuration of the long-convolution shell.

Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces",
ICLR 2022: the kernel of :class:`~seqarch.modules.dplr_ssm.DPLRSSMKernel` (HiPPO-LegS in
DPLR form, bilinear discretisation, Cauchy kernel; the truncated output matrix ``C~``
is learned directly) in the SSM layout of :class:`~seqarch.mixers.long_conv.LongConv`:
FFT convolution plus ``D u``, GELU, dropout, ``Linear(d, 2d)`` and a GLU.  The recurrent
step runs the same half system in O(d_model * d_state) per token.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..modules.dplr_ssm import DPLRSSMKernel
from ..modules.kernel_generator import DEFAULT_LR_SCALE
from .base import register_mixer
from .long_conv import LongConv


@register_mixer("s4")
class S4(LongConv):
    """S4 layer: ``(batch, length, d_model)`` -> ``(batch, length, d_model)``.

    Args:
        d_model: channels; each runs its own SSM.
        d_state: real state size N per channel (even); ``N // 2`` complex modes are stored.
        causal: ``False`` runs a second SSM kernel backwards in time (no recurrent form).
        max_length: the kernel length ``L`` that ``C~ = C (I - Abar^L)`` is defined by (the
            length the model trains at); a forward takes at most ``max_length`` tokens, the
            recurrent step any number.
        dt_min, dt_max: range of the log-uniform initial step ``dt`` per channel.
        lr_scale: learning rate of ``Lambda``, ``P``, ``B`` and ``log_dt`` as a multiple of the run's
            (``None``: the run's); no weight decay.
        dropout: after the GELU.
        device, dtype: of the parameters; the SSM kernel and FFTs run in ``compute_dtype(x.dtype)``.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "s4": {"description": "S4 (diagonal plus low-rank state space, Gu et al. 2022) with a SwiGLU channel mixer",
               "channel_mixer": "glu"},
    }

    kernel_class = DPLRSSMKernel

    def __init__(self, d_model: int, *, d_state: int = 64, causal: bool = True, max_length: int = 2048,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, lr_scale: float | None = DEFAULT_LR_SCALE,
                 dropout: float = 0.0, device: Any = None, dtype: torch.dtype | None = None,
                 layer_idx: int | None = None) -> None:
        kernel = {"d_state": d_state, "max_length": max_length, "dt_min": dt_min, "dt_max": dt_max,
                  "lr_scale": lr_scale}
        super().__init__(d_model, kernel, causal=causal, dropout=dropout, device=device, dtype=dtype,
                         layer_idx=layer_idx)
        self.d_state = d_state
