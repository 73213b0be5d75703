"""Multi-head softmax attention (Vaswani et al., "Attention Is All You Need", 2017).

Grouped-query heads (Ainslie et al., "GQA", 2023): ``n_kv_heads`` key/value heads
shared by ``n_heads / n_kv_heads`` query heads each.  Rotary position embedding
(Su et al., 2021) on queries and keys by default.  The parallel path calls the
fused kernel :func:`seqarch.kernels.attention.attention` (FlashAttention-2 in
Triton on GPUs, SDPA elsewhere); so do the recurrent paths, which keep a KV cache of at
most ``max_length`` tokens: a step or a prefill is the newest queries against every
cached key (the kernel's bottom-right causal alignment).  Attention dropout, in training,
runs SDPA (the fused kernel has none).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_divides, check_dropout, check_positive_int
from ..kernels.attention import attention, causal_mask
from ..modules.rotary import RotaryEmbedding
from .base import GRAPH_POSITION, Mixer, State, register_mixer, with_graph_position


@register_mixer("attention")
class Attention(Mixer):
    """Softmax attention.  ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: width.
        n_heads: query heads (default: one per 64 channels, at least one); must divide d_model.
        n_kv_heads: key/value heads (default ``n_heads``); must divide ``n_heads``.
        causal: mask future positions; ``False`` is bidirectional (no recurrent form).
        rotary: rotary position embedding on queries and keys (head dim must be even).
        rotary_base: the rotary frequency base.
        max_length: capacity of the KV cache made by ``init_state`` (the parallel
            forward has no length limit).
        dropout: attention dropout, in training only.
        bias: biases in the projections.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "transformer": {"description": "softmax attention with rotary positions and a SwiGLU channel mixer "
                                       "(GPT/Llama style)",
                        "channel_mixer": "glu", "mixer_options": {"attention": {"rotary": True}}},
    }

    has_bidirectional_form = True

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int | None = None,
        n_kv_heads: int | None = None,
        causal: bool = True,
        rotary: bool = True,
        rotary_base: float = 10000.0,
        max_length: int = 2048,
        dropout: float = 0.0,
        bias: bool = False,
        device=None,
        dtype=None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        n_heads = max(1, d_model // 64) if n_heads is None else check_positive_int("n_heads", n_heads)
        check_divides("n_heads", n_heads, "d_model", d_model)
        n_kv_heads = n_heads if n_kv_heads is None else check_positive_int("n_kv_heads", n_kv_heads)
        check_divides("n_kv_heads", n_kv_heads, "n_heads", n_heads)
        check_dropout(dropout)
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.max_length = check_positive_int("max_length", max_length)
        self.dropout = dropout
        if rotary and self.head_dim % 2:
            raise ValueError(
                f"rotary: expected an even head dim d_model/n_heads for rotary embedding, got "
                f"{d_model}/{n_heads}={self.head_dim}; pass rotary=False or change n_heads"
            )
        factory = {"device": device, "dtype": dtype}
        qkv_width = (n_heads + 2 * n_kv_heads) * self.head_dim
        self.qkv = nn.Linear(d_model, qkv_width, bias=bias, **factory)
        self.out = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.rotary = RotaryEmbedding(self.head_dim, base=rotary_base) if rotary else None

    def _project(self, x: torch.Tensor, start: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(batch, n_heads, length, head_dim)`` and keys, values ``(batch, n_kv_heads, ...)``,
        rotated for absolute positions ``start, start + 1, ...`` (a device tensor ``start: (1,)``: one
        token there)."""
        batch, length, _ = x.shape
        heads = self.n_heads + self.n_kv_heads
        qkv = self.qkv(x)
        qk = qkv[..., :heads * self.head_dim].view(batch, length, heads, self.head_dim)
        if self.rotary is not None:  # queries and keys rotated together, from the cached tables
            qk = self.rotary.rotate(qk, start, dim=-3)
        q, k = qk.transpose(1, 2).split([self.n_heads, self.n_kv_heads], dim=1)
        v = qkv[..., heads * self.head_dim:].view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Attention of queries, the newest ``length_q`` of the ``length_kv`` tokens whose keys are
        given, over those keys; returns ``(batch, length_q, d_model)``.

        The parallel forward (``length_q == length_kv``), a KV-cache step (one query) and a
        prefill after earlier tokens (``length_q < length_kv``) are the same call: the kernel's
        causal mask is bottom-right aligned, query ``i`` sees keys up to ``i + length_kv - length_q``.
        ``mask`` (``(length_q, length_kv)``, True where a query sees a key) replaces that rule, through
        SDPA: a graph step's filled cache slots.
        """
        batch, _, length, _ = q.shape
        dropout = self.dropout if self.training else 0.0
        if dropout == 0.0 and mask is None:
            # One query (a decoding step) sees every cached key: no mask to build.
            # q, k, v come from this layer's projections, shaped to the kernel's contract: no re-check.
            y = attention(q, k, v, causal=self.causal and length > 1, validate=False)
        else:
            # The fused kernel takes neither dropout nor a given mask: SDPA, whose is_causal aligns
            # top-left, so the kernel module's bottom-right mask when the lengths differ.
            if mask is None and self.causal and k.shape[2] != length:
                mask = causal_mask(length, k.shape[2], q.device)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=self.causal and mask is None, dropout_p=dropout,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        return self.out(y.transpose(1, 2).reshape(batch, length, self.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_sequence(x)
        if x.shape[1] == 0:  # no queries: the empty answer is well defined, the kernel takes no empty call
            return self.out(x)
        q, k, v = self._project(x, 0)
        return self._attend(q, k, v)

    # -- recurrent form: the KV cache ---------------------------------------------------
    def _init_state(self, batch_size, *, device=None, dtype=None, max_length=None) -> State:
        """``{"k", "v": (batch, n_kv_heads, max_length, head_dim), "length": 0}``.

        ``step`` and ``prefill`` write new keys and values into these tensors in place.
        """
        # init_state has checked the arguments and filled in device and dtype.
        capacity = self.max_length if max_length is None else max_length
        if self.rotary is not None:  # made here, eagerly, so a compiled step reads them instead of making them
            self.rotary.tables(capacity, device, dtype)
        shape = (batch_size, self.n_kv_heads, capacity, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "length": 0,
        }

    def _append(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Project ``x: (batch, new, d_model)``, write its keys/values to the cache, attend."""
        start, new = state["length"], x.shape[1]
        capacity = state["k"].shape[2]
        if start + new > capacity:
            raise ValueError(
                f"state: the KV cache holds max_length={capacity} tokens; expected at most "
                f"{capacity - start} more, got {new} (pass a larger max_length to init_state)"
            )
        q, k, v = self._project(x, start)
        # Written in place: copying the cache every token would cost O(max_length) per step.
        cache_k, cache_v = state["k"], state["v"]
        cache_k[:, :, start:start + new] = k
        cache_v[:, :, start:start + new] = v
        y = self._attend(q, cache_k[:, :, :start + new], cache_v[:, :, :start + new])
        return y, {**state, "k": cache_k, "v": cache_v, "length": start + new}

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if GRAPH_POSITION in state:
            return self._graph_step(x_t, state)
        y, state = self._append(x_t.unsqueeze(1), state)
        return y[:, 0], state

    # -- the step a CUDA graph replays: the position on the device ---------------------------
    has_graph_step = True

    def graph_state(self, state: State) -> State:
        """``state`` with its length also on the device (:func:`~seqarch.mixers.base.with_graph_position`),
        from which the step takes the rotary angle, the cache slot and the mask."""
        return with_graph_position(state, state["k"].device)

    def graph_steps_left(self, state: State) -> int:
        return state["k"].shape[2] - state["length"]

    def _graph_step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token with the same work at every position: the key and value written at the device
        position, attention over the whole cache with the slots after it masked (what a replayed
        graph can do; the step above reads only the filled slots and takes the fused kernel)."""
        position, cache_k, cache_v = state[GRAPH_POSITION], state["k"], state["v"]
        capacity = cache_k.shape[2]
        q, k, v = self._project(x_t.unsqueeze(1), position)
        cache_k.index_copy_(2, position, k)
        cache_v.index_copy_(2, position, v)
        seen = torch.arange(capacity, device=position.device)[None] <= position[:, None]  # (1 query, capacity)
        y = self._attend(q, cache_k, cache_v, mask=seen)[:, 0]
        position.add_(1)
        return y, {**state, "length": state["length"] + 1}

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The whole prompt in one attention call, keys and values written to the cache."""
        state = self.start_prefill(x, state, max_length=max(self.max_length, x.shape[1]))
        return self._append(x, state)

    # -- accounting -------------------------------------------------------------------
    def score_pairs(self, length: int) -> int:
        """(query, key) pairs per head the kernels compute on one sequence: ``L (L + 1) / 2`` causal
        (each query with the keys it sees, masked blocks skipped), ``L^2`` bidirectional."""
        return length * (length + 1) // 2 if self.causal else length * length

    def flops_breakdown(self, length: int) -> dict[str, int]:
        """Projections and the two attention products, ``4 d_head`` per score pair and head (the
        pairs the kernels compute, :meth:`score_pairs`); softmax 5 per pair."""
        check_positive_int("length", length)
        qkv_width = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        projections = 2 * length * self.d_model * (qkv_width + self.d_model)
        pairs = self.score_pairs(length) * self.n_heads
        rotary = 6 * length * (self.n_heads + self.n_kv_heads) * self.head_dim if self.rotary else 0
        return {"matmul": projections + 4 * pairs * self.head_dim, "fft": 0, "other": rotary + 5 * pairs}

    def masked_flops_breakdown(self, length: int) -> dict[str, int]:
        """The masked half a dense count adds (PaLM's ``12 n_layers d T`` counts scores dense)."""
        check_positive_int("length", length)
        masked = (length * length - self.score_pairs(length)) * self.n_heads
        return {"matmul": 4 * masked * self.head_dim, "fft": 0, "other": 5 * masked}

    def state_size(self, length: int) -> int:
        """Keys and values of every token read: ``2 * length * n_kv_heads * head_dim``."""
        return 2 * length * self.n_kv_heads * self.head_dim

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"rotary={self.rotary is not None}")
