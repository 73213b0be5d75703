"""Monarch Mixer sequence mixer (Fu et al., "Monarch Mixer", NeurIPS 2023, arXiv 2310.12109).

The M2 sequence mixer is a Hyena (Poli et al., ICML 2023) operator of order 2:
input projection to three streams, a short causal depthwise convolution, a gate, a
long convolution with an implicit filter computed by FFT, a second gate and an
output projection.  ``causal=True`` is M2-GPT (FFT padded to 2L);
``causal=False`` is M2-BERT (a forward and a backward filter).

The public M2 code has no recurrent mode; the one here is new.  It is exact but
not constant-cost: the implicit filter is an MLP of the position, not a low-order
state-space model, so the long convolution has no finite recurrent state and a
step at position ``t`` reads all ``t + 1`` gated values seen so far.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..checks import check_dropout, check_positive_int, check_real
from ..modules.fft_conv import bidirectional_fft_conv, fft_conv, fft_conv_flops
from ..modules.implicit_filter import ImplicitFilter, check_decay, check_emb_dim
from ..modules.short_conv import ShortConv
from ..precision import compute_dtype
from .base import Mixer, State, register_mixer


@register_mixer("m2")
class M2(Mixer):
    """Monarch Mixer / Hyena order-2 sequence mixer: ``(batch, length, d_model)`` -> same.

    ``u = in_proj(x)`` split after a short causal depthwise conv into ``x1, x2, v``;
    ``v <- x2 * v``; ``y = x1 * (k * v + D v)`` with ``k`` an implicit filter
    (:class:`~seqarch.modules.implicit_filter.ImplicitFilter`) and ``*`` a long
    convolution; output ``out_proj(dropout(y))``.

    Args:
        d_model: width.
        causal: M2-GPT (True) or bidirectional M2-BERT (False).
        max_length: longest sequence; the filter's positions are normalised by it.
        short_kernel: taps of the short depthwise conv (M2/Hyena: 3).
        filter_order: hidden width of the filter MLP (Hyena: 64).
        filter_emb_dim: positional features (odd, >= 3; M2: 5).
        filter_decay: ``(fast, slow)`` fractions of ``max_length`` over which the
            fastest / slowest channel's window decays to 1e-2 (Hyena: 0.3, 1.5).
        dropout: on the gated output before ``out_proj``.
        lr: learning rate hint (``_optim``) for the filter parameters (Hyena: 1e-3).
    """

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_length: int = 2048,
        short_kernel: int = 3,
        filter_order: int = 64,
        filter_emb_dim: int = 5,
        filter_decay: tuple[float, float] = (0.3, 1.5),
        dropout: float = 0.0,
        lr: float = 1e-3,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(d_model, causal=causal)
        self.max_length = check_positive_int("max_length", max_length)
        self.short_kernel = check_positive_int("short_kernel", short_kernel)
        check_positive_int("filter_order", filter_order)
        check_emb_dim("filter_emb_dim", filter_emb_dim)
        check_decay("filter_decay", filter_decay)
        check_dropout(dropout)
        check_real("lr", lr, low=0.0, expected="a positive number")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ValueError(f"dtype: expected a floating torch.dtype, got {dtype!r}")

        factory = {"device": device, "dtype": dtype}
        d = d_model
        self.in_proj = nn.Linear(d, 3 * d, **factory)
        self.short_conv = ShortConv(3 * d, short_kernel, **factory)
        filter_options = dict(order=filter_order, emb_dim=filter_emb_dim, decay=filter_decay, lr=lr, **factory)
        self.filter = ImplicitFilter(d, max_length, **filter_options)
        # M2-BERT: a second filter, run backwards in time, for the future context.
        self.filter_backward = None if causal else ImplicitFilter(d, max_length, **filter_options)
        self.skip = nn.Parameter(torch.randn(d, **factory))  # Hyena's per-channel "bias" D
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d, d, **factory)

    # -- parallel form ----------------------------------------------------------------
    def _streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x: (batch, length, d)`` -> ``(u, x1, x2, v)``: ``u = in_proj(x)`` as
        ``(batch, 3d, length)`` (the short conv's input), the gates ``x1, x2`` and the
        ungated value ``v`` as ``(batch, d, length)``."""
        u = self.in_proj(x).transpose(1, 2)
        x1, x2, v = self.short_conv(u).split(self.d_model, dim=1)
        return u, x1, x2, v

    def _gated_long_conv(self, x1: torch.Tensor, x2: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x1 * (k * (x2 v) + D x2 v)`` for ``(batch, d, length)`` streams, in ``v``'s dtype.

        Both gates are fused into the FFT convolution (computed in at least float32) and
        the skip ``D`` rides on the filter's tap 0, the present token's weight.
        """
        length = v.shape[-1]
        k = self.filter(length)
        k = torch.cat([k[:, :1] + self.skip.to(k.dtype).unsqueeze(-1), k[:, 1:]], dim=-1)
        if self.causal:
            return fft_conv(v, k, pre_gate=x2, post_gate=x1)
        return bidirectional_fft_conv(v, k, self.filter_backward(length), pre_gate=x2, post_gate=x1)

    def _output(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dropout and output projection; ``y: (batch, d, ...)`` with the channel axis
        second -> ``(batch, ..., d)`` in ``dtype``."""
        return self.out_proj(self.dropout(y.movedim(1, -1))).to(dtype)

    def _check_length(self, length: int, argument: str = "x") -> None:
        if length > self.max_length:
            raise ValueError(
                f"{argument}: expected a length of at most max_length={self.max_length}, got {length}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, length, d_model)`` -> ``(batch, length, d_model)``, length <= max_length."""
        self.check_sequence(x)
        self._check_length(x.shape[1])
        _, x1, x2, v = self._streams(x)
        return self._output(self._gated_long_conv(x1, x2, v), x.dtype)

    # -- recurrent form ---------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
        max_length: int | None = None,
    ) -> State:
        """The empty state for ``batch_size`` sequences of at most ``max_length`` tokens.

        Keys: ``"batch_size"``; ``"position"`` (tokens read so far); ``"max_length"``;
        ``"short_conv"`` ``(batch, 3 d_model, short_kernel - 1)``, the short conv's
        last inputs; ``"v"`` ``(batch, d_model, position)``, every gated value so far
        (the long convolution's history, in at least float32, grown by one column
        per step); ``"taps"`` ``(d_model, max_length)``, the filter reversed in time.

        ``"taps"`` is a cache of parameters, not per-sequence state: computed once
        here (in the current grad mode) so that a step does not re-evaluate the
        filter MLP; build a new state after the parameters change.
        """
        if not self.causal:
            return super().init_state(batch_size, device=device, dtype=dtype, max_length=max_length)
        check_positive_int("batch_size", batch_size)
        if max_length is None:
            max_length = self.max_length
        check_positive_int("max_length", max_length)
        self._check_length(max_length, "max_length")
        device, dtype = self._state_like(device, dtype)
        taps = self.filter(max_length).to(device=device, dtype=compute_dtype(dtype))
        return {
            "batch_size": batch_size,
            "position": 0,
            "max_length": max_length,
            "short_conv": self.short_conv.init_state(batch_size, device=device, dtype=dtype),
            "v": torch.zeros(batch_size, self.d_model, 0, device=device, dtype=compute_dtype(dtype)),
            "taps": taps.flip(-1),
        }

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token, ``x_t: (batch, d_model)`` -> ``(y_t, state)``; O(position * d_model).

        ``y_t = out_proj(x1_t * (sum_{s<=t} k[s] v_{t-s} + D v_t))``: the filter has no
        finite-order recurrence, so the whole history of ``v`` is kept and read.
        """
        position, max_length = state["position"], state["max_length"]
        if position >= max_length:
            raise ValueError(
                f"x_t: expected at most max_length={max_length} tokens per sequence, "
                f"got token {position + 1}"
            )
        u, history = self.short_conv.step(self.in_proj(x_t), state["short_conv"])
        x1, x2, v = u.split(self.d_model, dim=-1)
        v = x2 * v
        # A new tensor per step (not an in-place write) keeps earlier states and the
        # autograd graph valid; the copy costs the same O(t d) as the sum below.
        v_history = torch.cat([state["v"], v.to(state["v"].dtype).unsqueeze(-1)], dim=-1)
        taps = state["taps"][:, max_length - 1 - position:]  # k[t], ..., k[0]
        conv = torch.einsum("bds,ds->bd", v_history, taps)
        conv = conv + self.skip.to(conv.dtype) * v_history[..., -1]
        new_state = dict(state, position=position + 1, short_conv=history, v=v_history)
        return self._output(x1 * conv.to(x1.dtype), x_t.dtype), new_state

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run a prompt ``x: (batch, length, d_model)`` in parallel; returns ``(y, state)``.

        From an empty (or no) state this is one ``forward``; a state that has
        already read tokens falls back to the base class's step loop.
        """
        state = self.start_prefill(x, state)
        if state["position"] > 0:
            return super().prefill(x, state)
        self._check_length(x.shape[1], "x")
        if x.shape[1] > state["max_length"]:
            raise ValueError(
                f"x: expected a length of at most the state's max_length={state['max_length']}, "
                f"got {x.shape[1]}"
            )
        u, x1, x2, v = self._streams(x)
        y = self._output(self._gated_long_conv(x1, x2, v), x.dtype)
        new_state = dict(
            state,
            position=x.shape[1],
            short_conv=self.short_conv.prefill_state(u).to(state["short_conv"].dtype),
            v=(x2 * v).to(state["v"].dtype),
        )
        return y, new_state

    # -- accounting -------------------------------------------------------------------
    def _filters(self) -> list[ImplicitFilter]:
        return [self.filter] if self.causal else [self.filter, self.filter_backward]

    def flops_breakdown(self, length: int) -> dict[str, int]:
        """Forward FLOPs for one sequence of ``length`` tokens, by kind.

        ``matmul``: in/out projections and the filter MLP(s) (FlopCounterMode's
        count); ``conv``: the short conv's products (FlopCounterMode's count, bias
        excluded); ``fft``: the FFT convolution by ``fft_conv_flops`` (Hyena appendix
        A.2 counting, real FFTs, filter FFT included); ``other``: bias adds, gates,
        the ``D v`` skip and the filter's activations and decay window.
        """
        check_positive_int("length", length)
        d, n = self.d_model, length
        matmul = 2 * n * (3 * d * d + d * d)
        other = n * (3 * d + d)  # projection biases
        for filt in self._filters():
            parts = filt.flops(n)
            matmul += parts["matmul"]
            other += parts["other"]
        conv = self.short_conv.flops(n)
        other += n * 3 * d  # short-conv bias
        other += n * d * (2 + 2)  # two gates; D v multiply and add
        if self.causal:
            fft = fft_conv_flops(n, d, causal=True)
        else:  # bidirectional_fft_conv: one circular FFT conv of size 2L
            fft = fft_conv_flops(2 * n, d, causal=False)
        return {"matmul": matmul, "conv": conv, "fft": fft, "other": other}

    def state_size(self, length: int) -> int:
        """Numbers in the per-sequence state after ``length`` tokens.

        The short conv's ``3 d_model (short_kernel - 1)`` inputs plus
        ``length * d_model`` gated values.  The cached filter taps are excluded:
        they are a function of the parameters, shared by every sequence.  (Only
        ``causal=True`` runs the recurrent form; the count is the same formula.)
        """
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"length: expected a non-negative integer, got {length!r}")
        return 3 * self.d_model * (self.short_kernel - 1) + length * self.d_model

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_length={self.max_length}, short_kernel={self.short_kernel}"
