"""Based (Arora et al., "Simple linear attention language models balance the recall-throughput tradeoff",
ICML 2024, arXiv 2402.18668): a hybrid of three registered mixers, as the paper's model.

- ``based``: linear attention with the second-order Taylor feature map on 16-wide queries and keys
  (``phi(q) . phi(k) = 1 + s + s^2 / 2``, ``s = q . k / 4``) and the normaliser; a
  :class:`~seqarch.mixers.linear_attention.LinearAttention` with the paper's defaults;
- ``sliding_window_attention`` (its own module): softmax attention over the last 64 tokens;
- ``base_conv``: the paper's gated short convolution (BaseConv), ``y = (x W) * conv(x)``, a
  depthwise causal convolution of 3 taps gated by a linear projection.

The ``based`` preset stacks them in the paper's pattern (mostly BaseConv, with Taylor linear
attention and sliding-window layers interleaved) with a SwiGLU channel mixer; every layer's state
has a fixed size (the window's ring buffer included).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..checks import check_positive_int
from ..modules.short_conv import ShortConv
from .base import Mixer, State, register_mixer
from .linear_attention import LinearAttention

BASED_PATTERN = ["base_conv", "based", "base_conv", "sliding_window_attention", "base_conv", "based"]


@register_mixer("based")
class BasedLinearAttention(LinearAttention):
    """Based's Taylor linear attention: :class:`LinearAttention` with ``feature_map="taylor"``,
    ``key_dim=16`` and the normaliser by default.  Same arguments."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "based": {"description": "Based (Arora et al. 2024): BaseConv, Taylor linear attention and 64-token "
                                 "sliding-window attention layers, with a SwiGLU channel mixer",
                  "mixer": BASED_PATTERN, "n_layers": len(BASED_PATTERN), "channel_mixer": "glu"},
    }

    def __init__(self, d_model: int, *, n_heads: int | None = None, feature_map: str = "taylor", key_dim: int = 16,
                 normalize: bool = True, eps: float = 1e-6, bias: bool = False, causal: bool = True,
                 device: Any = None, dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        super().__init__(d_model, n_heads=n_heads, feature_map=feature_map, key_dim=key_dim, normalize=normalize,
                         eps=eps, bias=bias, causal=causal, device=device, dtype=dtype, layer_idx=layer_idx)


@register_mixer("base_conv")
class BaseConv(Mixer):
    """Gated short convolution (Based's BaseConv): ``y = (x W + b) * conv(x)`` over ``(batch, length, d_model)``.

    Args:
        d_model: width.
        kernel_size: taps of the depthwise causal convolution (the paper: 3).
    """

    has_fixed_size_state = True
    step_reads_position = False

    def __init__(self, d_model: int, *, kernel_size: int = 3, causal: bool = True, device: Any = None,
                 dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        factory = {"device": device, "dtype": dtype}
        self.projection = nn.Linear(d_model, d_model, **factory)
        self.conv = ShortConv(d_model, check_positive_int("kernel_size", kernel_size), **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_sequence(x)
        return self.projection(x) * self.conv(x.transpose(1, 2)).transpose(1, 2)

    def _init_state(self, batch_size, *, device, dtype, max_length) -> State:
        """``{"conv": (batch, kernel_size - 1, d_model)}``: the last inputs."""
        return {"conv": self.conv.init_state(batch_size, device=device, dtype=dtype)}

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y_t, history = self.conv.step(x_t, state["conv"])
        return self.projection(x_t) * y_t, {**state, "conv": history}

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        state = self.start_prefill(x, state)
        convolved, history = self.conv.extend(x.transpose(1, 2), state["conv"])
        return self.projection(x) * convolved.transpose(1, 2), {**state, "conv": history}

    def flops_breakdown(self, length: int) -> dict[str, int]:
        check_positive_int("length", length)
        return {"matmul": 2 * length * self.d_model ** 2, "conv": self.conv.flops(length), "fft": 0,
                "other": 3 * length * self.d_model}

    def state_size(self, length: int) -> int:
        return self.d_model * (self.conv.kernel_size - 1)
