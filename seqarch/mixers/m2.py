"""Monarch Mixer sequence mixer (Fu et al., "Monarch Mixer", NeurIPS 2023, arXiv 2310.12109).

The M2 sequence mixer is a Hyena (Poli et al., ICML 2023) operator of order 2, the
order-2 case of :class:`~seqarch.mixers.hyena.Hyena` with M2's settings: input projection to
three streams, a short causal depthwise convolution, a gate, a long convolution with
an implicit filter (:class:`~seqarch.modules.implicit_filter.ImplicitKernel`) computed
by FFT, a second gate and an output projection.  ``causal=True`` is M2-GPT (FFT padded
to 2L); ``causal=False`` is M2-BERT (a forward and a backward filter).

The public M2 code has no recurrent mode; the one here is new.  It is exact but
not constant-cost: the implicit filter is an MLP of the position, not a low-order
state-space model, so the long convolution has no finite recurrent state and a
step at position ``t`` reads all ``t + 1`` gated values seen so far.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..modules.kernel_generator import DEFAULT_LR_SCALE
from .base import register_mixer
from .hyena import Hyena


@register_mixer("m2")
class M2(Hyena):
    """Monarch Mixer / Hyena order-2 sequence mixer: ``(batch, length, d_model)`` -> same.

    ``x1, x2, v`` from ``in_proj(x)`` and a short causal depthwise conv;
    ``y = out_proj(dropout(x1 * (k * (x2 v) + D x2 v)))`` with ``k`` an implicit filter.

    Args:
        d_model: width.
        causal: M2-GPT (True) or bidirectional M2-BERT (False).
        max_length: longest sequence; the filter's positions are normalised by it.
        short_kernel: taps of the short depthwise conv (M2/Hyena: 3).
        filter_order: hidden width of the filter MLP (Hyena: 64).
        filter_emb_dim: positional features (odd, >= 3; M2: 5, Hyena: 3).
        filter_decay: ``(fast, slow)`` fractions of ``max_length`` over which the
            fastest / slowest channel's window decays to 1e-2 (Hyena: 0.3, 1.5).
        dropout: on the gated output before ``out_proj``.
        lr_scale: learning rate of the filter parameters as a multiple of the run's (``_optim``).
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "m2": {"description": "Monarch Mixer (Fu et al. 2023): the M2 sequence mixer and the block-diagonal "
                              "Monarch MLP", "channel_mixer": "monarch", "monarch_blocks": 4},
    }

    def __init__(self, d_model: int, *, causal: bool = True, max_length: int = 2048, short_kernel: int = 3,
                 filter_order: int = 64, filter_emb_dim: int = 5, filter_decay: tuple[float, float] = (0.3, 1.5),
                 dropout: float = 0.0, lr_scale: float = DEFAULT_LR_SCALE, device: Any = None,
                 dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        super().__init__(d_model, order=2, causal=causal, max_length=max_length, short_kernel=short_kernel,
                         filter_order=filter_order, filter_emb_dim=filter_emb_dim, filter_decay=filter_decay,
                         dropout=dropout, lr_scale=lr_scale, device=device, dtype=dtype, layer_idx=layer_idx)
