"""Sliding-window softmax attention: every query sees the ``window`` most recent tokens (itself included).

The local attention of Longformer (Beltagy et al., 2020) and Mistral, and one of the three layers of
Based (Arora et al., "Simple linear attention language models balance the recall-throughput
tradeoff", 2024, windows of 64 to 128 tokens).  Rotary positions on queries and keys.  The recurrent
state is a ring buffer of the last ``window`` keys and values, so it has a fixed size: a step reads
all ``window`` slots (unfilled ones masked) at every position.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_divides, check_positive_int
from ..modules.rotary import RotaryEmbedding
from .base import GRAPH_POSITION, Mixer, State, register_mixer, with_graph_position
from .linear_attention import default_heads, merge_heads


@register_mixer("sliding_window_attention")
class SlidingWindowAttention(Mixer):
    """Causal softmax attention over the last ``window`` tokens: ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: width.
        n_heads: heads (default one per 64 channels); must divide d_model (head dim even for rotary).
        window: tokens each query sees, itself included (Based: 64 to 128).
        rotary: rotary positions on queries and keys.
        bias: biases in the projections.
    """

    has_fixed_size_state = True

    def __init__(self, d_model: int, *, n_heads: int | None = None, window: int = 64, rotary: bool = True,
                 bias: bool = False, causal: bool = True, device: Any = None, dtype: torch.dtype | None = None,
                 layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        self.n_heads = default_heads(d_model, n_heads)
        check_divides("n_heads", self.n_heads, "d_model", d_model)
        self.head_dim = d_model // self.n_heads
        self.window = check_positive_int("window", window)
        if rotary and self.head_dim % 2:
            raise ValueError(f"rotary: expected an even head dim d_model/n_heads, got {d_model}/{self.n_heads}="
                             f"{self.head_dim}; pass rotary=False or change n_heads")
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.rotary = RotaryEmbedding(self.head_dim) if rotary else None

    def _project(self, x: torch.Tensor, start: int | torch.Tensor):
        """Queries, keys, values ``(batch, n_heads, length, head_dim)`` of ``x: (batch, length, d_model)``,
        queries and keys rotated together for positions ``start, start + 1, ...`` (a decoding step's
        operators are most of its time at small batch: one view, one rotation)."""
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim)
        qk = qkv[:, :, :2]
        if self.rotary is not None:
            qk = self.rotary.rotate(qk, start, dim=-4)
        q, k = qk.unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    def _attend(self, q, k, v, query_positions, key_positions) -> torch.Tensor:
        """Queries at ``query_positions`` over keys at ``key_positions`` within the window; ``(batch, n, d_model)``."""
        gap = query_positions[:, None] - key_positions[None, :]
        mask = (gap >= 0) & (gap < self.window)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(merge_heads(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_sequence(x)
        q, k, v = self._project(x, 0)
        positions = torch.arange(x.shape[1], device=x.device)
        return self._attend(q, k, v, positions, positions)

    def _init_state(self, batch_size, *, device, dtype, max_length) -> State:
        """``{"k", "v": (batch, n_heads, window, head_dim) ring buffers, "length": 0}``; token ``t`` sits in
        slot ``t % window``.  ``step`` and ``prefill`` write them in place."""
        shape = (batch_size, self.n_heads, self.window, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype),
                "v": torch.zeros(shape, device=device, dtype=dtype), "length": 0}

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The prompt against the cached window and itself; the ring buffers then hold its last tokens."""
        state = self.start_prefill(x, state)
        start, new = state["length"], x.shape[1]
        q, k, v = self._project(x, start)
        cached = torch.arange(max(0, start - self.window + 1), start, device=x.device)
        slots = cached % self.window
        keys = torch.cat([state["k"][:, :, slots], k], 2)
        values = torch.cat([state["v"][:, :, slots], v], 2)
        key_positions = torch.cat([cached, torch.arange(start, start + new, device=x.device)])
        y = self._attend(q, keys, values, key_positions[-new:], key_positions)
        keep = key_positions[-self.window:]
        state["k"][:, :, keep % self.window] = keys[:, :, -self.window:].to(state["k"].dtype)
        state["v"][:, :, keep % self.window] = values[:, :, -self.window:].to(state["v"].dtype)
        return y, {**state, "length": start + new}

    # The step below reads the position from the device in a graph state: a CUDA graph replays it.
    has_graph_step = True

    def graph_state(self, state: State) -> State:
        """``state`` with its length also on the device (:func:`~seqarch.mixers.base.with_graph_position`)."""
        return with_graph_position(state, state["k"].device)

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token: write its key and value to slot ``t % window``, attend over every slot (the unfilled
        ones masked), so the cost is the same at every position.  In a graph state ``t`` is read from
        the device (rotary angle, slot, mask) and advanced there."""
        length = state["length"]
        position = state.get(GRAPH_POSITION, length)
        q, k, v = self._project(x_t.unsqueeze(1), position)
        slot = position % self.window
        if isinstance(position, torch.Tensor):
            state["k"].index_copy_(2, slot, k.to(state["k"].dtype))
            state["v"].index_copy_(2, slot, v.to(state["v"].dtype))
        else:
            # A slice, not an index: a compiled step then takes any slot without specialising on it.
            state["k"][:, :, slot:slot + 1] = k.to(state["k"].dtype)
            state["v"][:, :, slot:slot + 1] = v.to(state["v"].dtype)
        filled = torch.arange(self.window, device=x_t.device) <= position
        y = F.scaled_dot_product_attention(q, state["k"].to(q.dtype), state["v"].to(q.dtype), attn_mask=filled[None, :])
        if isinstance(position, torch.Tensor):
            position.add_(1)
        return self.out(merge_heads(y))[:, 0], {**state, "length": length + 1}

    def flops_breakdown(self, length: int) -> dict[str, int]:
        """Projections and the two attention products, counted dense ``4 L^2 d`` as the parallel form
        computes them (SDPA with a banded mask; a banded kernel would compute ``4 L w d``)."""
        check_positive_int("length", length)
        keys = min(self.window, length)
        projections = 2 * length * self.d_model * 4 * self.d_model
        scores = 4 * length * length * self.d_model
        rotary = 12 * length * self.d_model if self.rotary is not None else 0
        return {"matmul": projections + scores, "fft": 0, "other": rotary + 5 * self.n_heads * length * keys}

    def state_size(self, length: int) -> int:
        """The ring buffers: ``2 * window * d_model``, whatever the length."""
        return 2 * self.window * self.d_model

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, window={self.window}"
