"""DeltaNet and Gated DeltaNet: linear attention that writes to its state by the delta rule.

DeltaNet (Yang et al., "Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
NeurIPS 2024, arXiv 2406.06484): ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T`` replaces
what the state held for key ``k_t`` instead of adding to it.  Gated DeltaNet (Yang, Kautz and
Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025, arXiv 2412.06464)
decays the state first by ``alpha_t = exp(-exp(A) softplus(x W_a + dt_bias))`` (Mamba-2's gate, one
per head).  Both papers' layer: q, k, v projections, a short causal convolution (4 taps) and SiLU on
each, L2-normalised queries and keys (queries scaled by ``d_k^(-1/2)``), ``beta_t = sigmoid(x W_b)``
per head, then a per-head RMSNorm of the output; Gated DeltaNet adds the swish output gate
``swish(x W_g)`` and twice-wide values.  The parallel form is the chunked WY form
(:func:`seqarch.kernels.delta_rule.delta_rule`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_bool, check_divides, check_positive_int
from ..kernels.chunked_linear_attention import effective_chunk
from ..kernels.delta_rule import delta_rule, delta_rule_step
from ..modules.parameter_cache import cached
from ..modules.short_conv import ShortConv
from .base import register_mixer
from .gla import expanded_width
from .linear_attention import MatrixStateMixer, default_heads, linear_flops


@register_mixer("deltanet")
class DeltaNet(MatrixStateMixer):
    """DeltaNet: ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: width.
        n_heads: heads (default one per 64 channels); must divide d_model.
        expand_v: value width over ``d_model`` (DeltaNet: 1, Gated DeltaNet: 2).
        short_kernel: taps of the short convolutions on q, k, v (the papers: 4).
        output_gate: the swish output gate ``swish(x W_g)`` (DeltaNet: off, Gated DeltaNet: on).
        gated: decay the state by the per-head gate ``alpha_t`` (Gated DeltaNet).
        bias: biases in the projections.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "deltanet": {"description": "DeltaNet (Yang et al. 2024): the delta rule with short convolutions and "
                                    "a SwiGLU channel mixer", "channel_mixer": "glu"},
    }
    gated_default = False

    def __init__(self, d_model: int, *, n_heads: int | None = None, expand_v: float = 1.0, short_kernel: int = 4,
                 output_gate: bool | None = None, gated: bool | None = None, bias: bool = False, causal: bool = True,
                 device: Any = None, dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        self.n_heads = default_heads(d_model, n_heads)
        check_divides("n_heads", self.n_heads, "d_model", d_model)
        self.gated = check_bool("gated", self.gated_default if gated is None else gated)
        self.output_gate = check_bool("output_gate", self.gated_default if output_gate is None else output_gate)
        self.value_width = expanded_width("expand_v", d_model, expand_v, self.n_heads)
        self.state_key_dim = d_model // self.n_heads
        self.state_value_dim = self.value_width // self.n_heads
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(d_model, 2 * d_model + self.value_width, bias=bias, **factory)
        self.conv = ShortConv(2 * d_model + self.value_width, check_positive_int("short_kernel", short_kernel),
                              bias=False, **factory)
        self.beta = nn.Linear(d_model, self.n_heads, bias=bias, **factory)
        self.gate = nn.Linear(d_model, self.value_width, bias=bias, **factory) if self.output_gate else None
        self.out = nn.Linear(self.value_width, d_model, bias=bias, **factory)
        if self.gated:  # Mamba-2's gate: A in [1, 16], dt in [1e-3, 1e-1] through softplus
            self.decay = nn.Linear(d_model, self.n_heads, bias=False, **factory)
            self.A_log = nn.Parameter(torch.empty(self.n_heads, **factory).uniform_(1, 16).log())
            dt = torch.exp(torch.rand(self.n_heads, **factory) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus

    def _extra_state(self, batch_size, device, dtype):
        return {"conv": self.conv.init_state(batch_size, device=device, dtype=dtype)}

    def _extra_state_size(self) -> int:
        return self.conv.channels * (self.conv.kernel_size - 1)

    def _project(self, x, state):
        mixed = self.qkv(x)
        if x.dim() == 2:  # one token: (batch, channels)
            conv, history = self.conv.step(mixed, state["conv"])
            extra = {"conv": history}
        else:  # the convolution runs over (batch, channels, length)
            mixed = mixed.transpose(1, 2)
            if state is None:
                conv, extra = self.conv(mixed), {}
            else:
                conv, history = self.conv.extend(mixed, state["conv"])
                extra = {"conv": history}
            conv = conv.transpose(1, 2)
        qk, v = F.silu(conv).split([2 * self.d_model, self.value_width], dim=-1)
        # q and k side by side, (..., 2, heads, d_k): one L2 normalisation for both
        q, k = F.normalize(qk.unflatten(-1, (2, self.n_heads, self.state_key_dim)), dim=-1).unbind(-3)
        q, v = q / math.sqrt(self.state_key_dim), v.unflatten(-1, (self.n_heads, -1))
        gates = {"beta": self.beta(x).sigmoid()}
        if self.gated:
            # -exp(A_log) made once per parameter version where no graph needs it (two ops fewer per token)
            rates = cached(self, "neg_rates", lambda: -self.A_log.exp(), params=(self.A_log,))
            gates["log_decay"] = F.softplus(self.decay(x) + self.dt_bias) * rates
        return q, k, v, gates, extra

    def _mix(self, q, k, v, gates, initial_state):
        return delta_rule(q, k, v, gates["beta"], gates.get("log_decay"), initial_state, chunk_size=self.chunk_size)

    def _mix_step(self, q_t, k_t, v_t, gates_t, state):
        o_t, state = delta_rule_step(q_t, k_t, v_t, gates_t["beta"], gates_t.get("log_decay"), state,
                                     inplace=not torch.is_grad_enabled())
        return o_t.to(v_t.dtype), state

    def _combine(self, o, x):
        y = F.rms_norm(o, (o.shape[-1],), eps=1e-6).flatten(-2)
        if self.gate is not None:
            y = F.silu(self.gate(x)) * y
        return self.out(y)

    def _chunked_tokens(self, length: int) -> tuple[int, int]:
        chunk = effective_chunk(length, self.chunk_size)
        return chunk, -(-length // chunk) * chunk

    def mixing_flops(self, length: int) -> int:
        """The WY form's matrix products: the linear-attention ones plus ``K K^T`` and ``K S`` per chunk."""
        chunk, tokens = self._chunked_tokens(length)
        d_k, d_v = self.state_key_dim, self.state_value_dim
        return super().mixing_flops(length) + 2 * tokens * self.n_heads * (chunk * d_k + d_k * d_v)

    def solve_flops(self, length: int) -> int:
        """The triangular solves, ``C^2 d_v`` per chunk and head (FlopCounterMode counts no solve: "other")."""
        chunk, tokens = self._chunked_tokens(length)
        return tokens * self.n_heads * chunk * self.state_value_dim

    def flops_breakdown(self, length: int) -> dict[str, int]:
        check_positive_int("length", length)
        layers = [self.qkv, self.beta, self.out] + [m for m in (self.gate, getattr(self, "decay", None)) if m]
        projections = sum(linear_flops(layer, length) for layer in layers)
        channels = self.conv.channels
        other = length * (4 * channels + 6 * self.d_model + 4 * self.value_width + 4 * self.n_heads)
        other += self.solve_flops(length)
        if self.gate is not None:
            other += 5 * length * self.value_width
        return {"matmul": projections + self.mixing_flops(length), "conv": self.conv.flops(length), "fft": 0,
                "other": other}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, value_width={self.value_width}, "
                f"gated={self.gated}, output_gate={self.output_gate}")


@register_mixer("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet: :class:`DeltaNet` with the per-head decay gate and the swish output gate on, and
    values twice as wide (``expand_v=2``), as the paper's layer.  Same arguments."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "gated_deltanet": {"description": "Gated DeltaNet (Yang et al. 2025): the gated delta rule with a SwiGLU "
                                          "channel mixer", "channel_mixer": "glu"},
    }
    gated_default = True

    def __init__(self, d_model: int, *, n_heads: int | None = None, expand_v: float = 2.0, short_kernel: int = 4,
                 output_gate: bool | None = None, gated: bool | None = None, bias: bool = False, causal: bool = True,
                 device: Any = None, dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        super().__init__(d_model, n_heads=n_heads, expand_v=expand_v, short_kernel=short_kernel,
                         output_gate=output_gate, gated=gated, bias=bias, causal=causal, device=device, dtype=dtype,
                         layer_idx=layer_idx)
