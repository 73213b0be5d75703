"""Gated linear attention (Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient
Training", ICML 2024, arXiv 2312.06635).

Linear attention with a data-dependent diagonal decay: per head
``S_t = diag(alpha_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``, where
``alpha_t = sigmoid(x_t W_a1 W_a2 + b)^(1/tau)`` (a rank-16 projection, ``tau = 16``) has one decay
per key channel.  Keys are half as wide as the model (``expand_k = 0.5``), values as wide
(``expand_v = 1``), queries scaled by ``d_k^(-1/2)``.  The paper's output: a norm per head and the
swish output gate, ``y = (swish(x W_r) * Norm(o)) W_o``.  The chunked form runs the log-decay
``log(alpha_t) = logsigmoid(.) / tau`` per key channel.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_divides, check_positive_int, check_positive_real
from .base import register_mixer
from .linear_attention import MatrixStateMixer, default_heads, linear_flops


def expanded_width(argument: str, d_model: int, expand: float, n_heads: int) -> int:
    """``d_model * expand``, checked to be a positive multiple of ``n_heads``."""
    check_positive_real(argument, expand)
    width = d_model * expand
    if width != int(width) or int(width) % n_heads:
        raise ValueError(f"{argument}: expected d_model * {argument} to be a multiple of n_heads={n_heads}, "
                         f"got {d_model} * {expand} = {width}")
    return int(width)


@register_mixer("gla")
class GatedLinearAttention(MatrixStateMixer):
    """Gated linear attention: ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: width.
        n_heads: heads (default one per 64 channels; the paper: 4).
        expand_k: key width over ``d_model`` (the paper: 0.5).
        expand_v: value width over ``d_model`` (the paper: 1).
        gate_rank: rank of the decay's projection (the paper: 16).
        gate_normalizer: ``tau`` of ``alpha = sigmoid(.)^(1/tau)`` (the paper: 16).
        bias: biases in the q, k, v, gate and output projections.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "gla": {"description": "GLA (Yang et al. 2024): gated linear attention with a SwiGLU channel mixer",
                "channel_mixer": "glu"},
    }

    def __init__(self, d_model: int, *, n_heads: int | None = None, expand_k: float = 0.5, expand_v: float = 1.0,
                 gate_rank: int = 16, gate_normalizer: float = 16.0, bias: bool = False, causal: bool = True,
                 device: Any = None, dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        self.n_heads = default_heads(d_model, n_heads)
        check_divides("n_heads", self.n_heads, "d_model", d_model)
        self.key_width = expanded_width("expand_k", d_model, expand_k, self.n_heads)
        self.value_width = expanded_width("expand_v", d_model, expand_v, self.n_heads)
        self.state_key_dim = self.key_width // self.n_heads
        self.state_value_dim = self.value_width // self.n_heads
        self.gate_rank = check_positive_int("gate_rank", gate_rank)
        self.gate_normalizer = check_positive_real("gate_normalizer", gate_normalizer)
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(d_model, 2 * self.key_width + self.value_width, bias=bias, **factory)
        self.decay_down = nn.Linear(d_model, gate_rank, bias=False, **factory)
        self.decay_up = nn.Linear(gate_rank, self.key_width, bias=True, **factory)
        self.gate = nn.Linear(d_model, self.value_width, bias=bias, **factory)
        self.out = nn.Linear(self.value_width, d_model, bias=bias, **factory)

    def _project(self, x, state):
        q, k, v = self.qkv(x).split([self.key_width, self.key_width, self.value_width], dim=-1)
        q, k, v = (t.unflatten(-1, (self.n_heads, -1)) for t in (q, k, v))
        q = q / math.sqrt(self.state_key_dim)
        log_decay = F.logsigmoid(self.decay_up(self.decay_down(x))) / self.gate_normalizer
        return q, k, v, {"log_decay": log_decay.unflatten(-1, (self.n_heads, -1))}, {}

    def _combine(self, o, x):
        normed = F.rms_norm(o, (o.shape[-1],), eps=1e-6)
        return self.out(F.silu(self.gate(x)) * normed.flatten(-2))

    def flops_breakdown(self, length: int) -> dict[str, int]:
        check_positive_int("length", length)
        layers = (self.qkv, self.decay_down, self.decay_up, self.gate, self.out)
        projections = sum(linear_flops(layer, length) for layer in layers)
        decay = 4 * length * self.key_width  # logsigmoid, scale, exp (per channel, in the op)
        other = decay + length * (4 * self.value_width + 4 * self.value_width)  # norm, swish gate, product
        return {"matmul": projections + self.mixing_flops(length), "fft": 0, "other": other}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, key_width={self.key_width}, "
                f"value_width={self.value_width}")
