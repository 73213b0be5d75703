"""H3: Hungry Hungry Hippos (Fu, Dao, Saab, Thomas, Rudra, Ré, ICLR 2023, arXiv 2212.14052).

``q, k, v`` are projections of the input; a shift SSM runs on ``k``, a diagonal SSM (the
S4D kernel, :class:`~seqarch.modules.diagonal_ssm.DiagonalSSMKernel`) on the product
``k v``, and ``q`` gates the result:  ``y = out_proj(q * (SSM_diag(shift(k) v) + D shift(k) v))``.
With ``head_dim = p > 1`` the product is the outer product ``k v^T`` of each head's ``p``
channels (``p * p`` sequences per head share the head's SSM) and ``q`` contracts it.

A configuration of :class:`~seqarch.mixers.long_conv.LongConv` (order 2, recurrent kernel,
short conv on the pre-gate only).  The shift SSM with state ``N`` (``A`` the shift matrix,
``B = e_1``, learned ``C`` and ``D``) has the kernel ``C_0 .. C_{N-1}`` and nothing after:
it *is* an ``N``-tap causal depthwise convolution, run as the shell's short convolution
(its present-token tap plays ``D``).  Both SSMs have finite state, so the step is exact
and O(1): ``N - 1`` past values of ``k`` and ``d_state`` numbers per SSM sequence.
``causal=False`` reads the diagonal SSM forwards and backwards (the shift stays causal).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..checks import check_positive_int
from ..modules.diagonal_ssm import DiagonalSSMKernel
from ..modules.kernel_generator import DEFAULT_LR_SCALE
from .base import register_mixer
from .long_conv import LongConv


@register_mixer("h3")
class H3(LongConv):
    """H3 layer: ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: width.
        d_state: real state size of the diagonal SSM (H3: 64).
        shift_state: state size ``N`` of the shift SSM on ``k``, i.e. its taps (H3: 64).
        head_dim: channels per head (H3: 1); must divide ``d_model``.
        causal: ``False``: the diagonal SSM runs both ways; no recurrent form.
        init, dt_min, dt_max, lr_scale: the S4D kernel's (see :class:`~seqarch.mixers.s4d.S4D`).
        dropout: on the gated output before ``out_proj``.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "h3": {"description": "H3 (Fu et al. 2023): shift and diagonal SSMs with multiplicative gates, "
                              "with an MLP channel mixer", "channel_mixer": "mlp"},
    }

    kernel_class = DiagonalSSMKernel

    def __init__(self, d_model: int, *, d_state: int = 64, shift_state: int = 64, head_dim: int = 1,
                 causal: bool = True, init: str = "lin", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 lr_scale: float | None = DEFAULT_LR_SCALE, dropout: float = 0.0, device: Any = None,
                 dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        check_positive_int("shift_state", shift_state)
        kernel = {"d_state": d_state, "init": init, "dt_min": dt_min, "dt_max": dt_max, "lr_scale": lr_scale}
        super().__init__(d_model, kernel, causal=causal, order=2, short_kernel=shift_state,
                         short_conv_streams="gates", head_dim=head_dim, dropout=dropout, device=device,
                         dtype=dtype, layer_idx=layer_idx)
        self.d_state, self.shift_state = d_state, shift_state
