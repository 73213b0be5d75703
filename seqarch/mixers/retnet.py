"""Multi-scale retention, the sequence mixer of RetNet (Sun et al., "Retentive Network: A Successor to
Transformer for Large Language Models", 2023, arXiv 2307.08621).

Per head ``h`` a fixed decay ``gamma_h = 1 - 2^(-5 - h)`` (multi-scale: the heads remember over
32 to thousands of tokens): ``S_t = gamma_h S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``, with rotary
positions on queries and keys (the paper's xPos without its extrapolation scaling) and keys scaled by
``d_k^(-1/2)``.  The paper's head output: a GroupNorm per head, then the swish output gate
``y = (swish(x W_G) * GroupNorm(o)) W_O``; values are twice as wide as keys (``d_v = 2 d_k``).
The parallel form is the chunked one (the paper's chunkwise recurrent form) with one scalar
log-decay per head.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_divides, check_positive_int
from ..modules.rotary import RotaryEmbedding
from .base import GRAPH_POSITION, State, register_mixer, with_graph_position
from .linear_attention import MatrixStateMixer, default_heads, linear_flops


@register_mixer("retnet")
class RetNet(MatrixStateMixer):
    """Multi-scale retention: ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: width.
        n_heads: heads (default one per 64 channels); must divide d_model, head dim even (rotary).
        value_expand: value and gate width over ``d_model`` (the paper: 2).
        rotary: rotary positions on queries and keys.
        bias: biases in the projections.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "retnet": {"description": "RetNet (Sun et al. 2023): multi-scale retention with a SwiGLU channel mixer",
                   "channel_mixer": "glu"},
    }

    def __init__(self, d_model: int, *, n_heads: int | None = None, value_expand: int = 2, rotary: bool = True,
                 bias: bool = False, causal: bool = True, device: Any = None, dtype: torch.dtype | None = None,
                 layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        self.n_heads = default_heads(d_model, n_heads)
        check_divides("n_heads", self.n_heads, "d_model", d_model)
        self.value_expand = check_positive_int("value_expand", value_expand)
        self.state_key_dim = d_model // self.n_heads
        self.state_value_dim = self.state_key_dim * self.value_expand
        if rotary and self.state_key_dim % 2:
            raise ValueError(f"rotary: expected an even head dim d_model/n_heads, got {d_model}/{self.n_heads}="
                             f"{self.state_key_dim}; pass rotary=False or change n_heads")
        factory = {"device": device, "dtype": dtype}
        value_width = d_model * self.value_expand
        self.qkv = nn.Linear(d_model, 2 * d_model + value_width, bias=bias, **factory)
        self.gate = nn.Linear(d_model, value_width, bias=bias, **factory)
        self.out = nn.Linear(value_width, d_model, bias=bias, **factory)
        self.rotary = RotaryEmbedding(self.state_key_dim) if rotary else None
        # log(gamma_h), fixed; a buffer in float64 cast at use, so every dtype gets the same decays.
        heads = torch.arange(self.n_heads, dtype=torch.float64)
        self.register_buffer("log_gamma", torch.log1p(-(2.0 ** (-5.0 - heads))), persistent=False)

    @property
    def step_reads_position(self) -> bool:
        """With rotary positions a step rotates its query and key by the state's ``"length"``."""
        return self.rotary is not None

    # With rotary positions, a graph state's step takes them from the device: a CUDA graph replays it.
    has_graph_step = True

    def graph_state(self, state: State) -> State:
        """``state`` with its length also on the device where a step reads it (rotary positions;
        :func:`~seqarch.mixers.base.with_graph_position`)."""
        return state if self.rotary is None else with_graph_position(state, state["S"].device)

    def _project(self, x, state):
        value_width = self.d_model * self.value_expand
        qk, v = self.qkv(x).split([2 * self.d_model, value_width], dim=-1)
        qk = qk.unflatten(-1, (2 * self.n_heads, self.state_key_dim))  # queries' heads, then keys'
        if self.rotary is not None:  # queries and keys rotated together, from the cached tables
            start = 0 if state is None else state.get(GRAPH_POSITION, state["length"])
            qk = self.rotary.rotate(qk, start, dim=-3 if x.dim() == 3 else None)  # None: one token
            if isinstance(start, torch.Tensor):  # a graph state's position: read, so advanced
                start.add_(1)
        q, k = qk.chunk(2, dim=-2)
        log_decay = self.log_gamma.to(device=x.device, dtype=x.dtype).expand(*x.shape[:-1], self.n_heads)
        return q, k / math.sqrt(self.state_key_dim), v.unflatten(-1, (self.n_heads, -1)), {"log_decay": log_decay}, {}

    def _combine(self, o, x):
        normed = F.layer_norm(o, (o.shape[-1],))  # GroupNorm with one group per head, as the paper
        return self.out(F.silu(self.gate(x)) * normed.flatten(-2))

    def flops_breakdown(self, length: int) -> dict[str, int]:
        check_positive_int("length", length)
        projections = sum(linear_flops(layer, length) for layer in (self.qkv, self.gate, self.out))
        width = self.d_model * self.value_expand
        rotary = 12 * length * self.d_model if self.rotary is not None else 0
        other = rotary + length * (8 * width + 4 * width)  # group norm, swish gate and its product
        return {"matmul": projections + self.mixing_flops(length), "fft": 0, "other": other}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, value_expand={self.value_expand}"
