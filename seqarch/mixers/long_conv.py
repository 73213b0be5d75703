"""One long-convolution layer shell around a kernel generator (S4, S4D, Hyena / M2, ...).

The shape of the reference S4 code's ``FFTConv`` layer: the shell owns projections,
gates, the skip ``D``, bidirectionality, the recurrent state, prefill and FLOPs; the
kernel comes from a generator (:mod:`seqarch.modules.kernel_generator`):
:class:`~seqarch.modules.diagonal_ssm.DiagonalSSMKernel` (S4D),
:class:`~seqarch.modules.dplr_ssm.DPLRSSMKernel` (S4),
:class:`~seqarch.modules.implicit_filter.ImplicitKernel` (Hyena, M2).  A family is a
subclass naming its generator and mapping its options (see ``s4d.py``).

Two layouts, chosen by ``order``:

``order=None`` (the S4 / S4D layer, Gu et al. 2022)
    ``y = GLU(Linear(GELU(k * x + D x)))``: the long convolution on the input itself,
    then GELU, dropout, ``Linear(d, 2d)`` and a GLU.
``order=N >= 2`` (the Hyena operator of order N, Poli et al., ICML 2023; M2 is N = 2)
    ``in_proj`` to ``N + 1`` streams ``x_0 .. x_{N-1}, v`` after a short causal depthwise
    convolution; ``N - 1`` gated long convolutions
    ``v <- k_i * (x_{N-1-i} v) + D_i (x_{N-1-i} v)``; ``y = out_proj(dropout(x_0 v))``.

Recurrent form: with a recurrent generator (the SSMs) the state is the generator's,
of fixed size; otherwise the shell keeps the history of every long convolution's
input and a step at position ``t`` reads all ``t + 1`` values (exact, not flat).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..checks import check_dropout, check_int, check_nonnegative_int, check_positive_int
from ..modules.fft_conv import bidirectional_fft_conv, fft_conv, fft_conv_flops
from ..modules.kernel_generator import KernelGenerator, check_param_dtype
from ..modules.mlp import GLUOutput
from ..modules.short_conv import ShortConv
from ..precision import compute_dtype
from .base import Mixer, State


class LongConv(Mixer):
    """Long-convolution layer: ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: width.
        kernel_options: options of ``kernel_class`` (the subclass's generator), which is
            built with ``channels = d_model * (order - 1)`` (``d_model`` when ``order`` is
            None) and ``directions = 1`` (causal) or 2.
        causal: causal convolution; ``False``: a forward and a backward kernel, no
            recurrent form.
        order: ``None`` (SSM layer) or the Hyena order ``N >= 2`` (see the module).
        short_kernel: taps of the short convolution (Hyena layout only).
        dropout: after the GELU (SSM layout) or on the gated output (Hyena layout).
        device, dtype: of the parameters; kernels and FFTs run in ``compute_dtype``.
        layer_idx: see :class:`~seqarch.mixers.base.Mixer`.
    """

    kernel_class: ClassVar[type[KernelGenerator]]
    has_bidirectional_form = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A generator with a finite-state recurrence gives the layer a fixed-size state.
        cls.has_fixed_size_state = cls.kernel_class.recurrent

    def __init__(self, d_model: int, kernel_options: dict[str, Any], *, causal: bool = True,
                 order: int | None = None, short_kernel: int = 3, dropout: float = 0.0,
                 device: Any = None, dtype: torch.dtype | None = None, layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        check_param_dtype(dtype)
        check_dropout(dropout)
        self.order = None if order is None else check_int("order", order, minimum=2)
        self.n_convs = 1 if order is None else order - 1
        if self.kernel_class.recurrent and self.n_convs > 1:
            raise ValueError(f"order: a recurrent kernel runs one long convolution (order=2), got {order}")
        factory = {"device": device, "dtype": dtype}
        channels = self.n_convs * d_model
        self.kernel = self.kernel_class(channels, directions=1 if causal else 2, **kernel_options, **factory)
        self.skip = nn.Parameter(torch.randn(channels, **factory))  # D: the present token's own weight
        if order is None:
            self.short_kernel = 0
            self.output = GLUOutput(d_model, dropout=dropout, **factory)
        else:
            self.short_kernel = check_positive_int("short_kernel", short_kernel)
            self.in_proj = nn.Linear(d_model, (order + 1) * d_model, **factory)
            self.short_conv = ShortConv((order + 1) * d_model, short_kernel, **factory)
            self.dropout = nn.Dropout(dropout)
            self.out_proj = nn.Linear(d_model, d_model, **factory)

    @property
    def max_length(self) -> int | None:
        """The longest sequence the kernel covers (``None``: any)."""
        return self.kernel.max_length

    @property
    def _recurrent(self) -> bool:
        return self.kernel_class.recurrent

    # -- streams and output -------------------------------------------------------------
    def _streams(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, list, torch.Tensor | None]:
        """``x: (batch, length, d)`` -> ``(u, v, pre_gates, post_gate)``, channels second.

        ``u``: the short conv's input (Hyena layout; ``None`` otherwise), ``v``: the first
        long convolution's input, one pre-gate per long convolution (or ``None``)."""
        if self.order is None:
            return None, x.to(compute_dtype(x.dtype)).transpose(1, 2), [None], None
        u = self.in_proj(x).transpose(1, 2)
        streams = self.short_conv(u).split(self.d_model, dim=1)
        return u, streams[-1], list(reversed(streams[1:-1])), streams[0]

    def _output(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``y: (batch, d, ...)`` channels second -> ``(batch, ..., d)`` in ``dtype``."""
        y = y.movedim(1, -1)
        y = self.output(y) if self.order is None else self.out_proj(self.dropout(y))
        return y.to(dtype)

    def _kernels(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """``(directions, channels, length)`` in ``compute_dtype(dtype)`` with the skip on the
        forward kernel's tap 0 (``k * v + D v``, fused into the convolution)."""
        k = self.kernel(length, dtype)
        forward = torch.cat([k[:1, :, :1] + self.skip.to(k.dtype)[None, :, None], k[:1, :, 1:]], dim=-1)
        return torch.cat([forward, k[1:]])

    def _long_convs(self, v: torch.Tensor, pre_gates: list, post_gate: torch.Tensor | None,
                    readout: torch.Tensor | None = None, keep_inputs: bool = False,
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The gated long convolutions of ``v: (batch, d, length)``; returns the output and
        (``keep_inputs``) each convolution's gated input.  ``readout`` (what a recurrent state
        adds) joins the last convolution's output before the post-gate."""
        k = self._kernels(v.shape[-1], v.dtype)
        inputs = []
        for i, pre in enumerate(pre_gates):
            k_i = k[:, i * self.d_model:(i + 1) * self.d_model]
            post = post_gate if i == self.n_convs - 1 and readout is None else None
            if keep_inputs:
                inputs.append(v if pre is None else pre * v)
            if self.causal:
                v = fft_conv(v, k_i[0], pre_gate=pre, post_gate=post)
            else:
                v = bidirectional_fft_conv(v, k_i[0], k_i[1], pre_gate=pre, post_gate=post)
        if readout is not None:
            v = v + readout.to(v.dtype)
            v = v if post_gate is None else post_gate * v
        return v, inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, length, d_model)`` -> same shape in ``x.dtype``; ``length <= max_length``."""
        self.check_sequence(x)
        self.kernel.check_length(x.shape[1], "x")
        _, v, pre_gates, post_gate = self._streams(x)
        return self._output(self._long_convs(v, pre_gates, post_gate)[0], x.dtype)

    # -- recurrent form -----------------------------------------------------------------
    def _init_state(self, batch_size: int, *, device: Any, dtype: torch.dtype, max_length: int | None) -> State:
        """``"position"`` (tokens read), the short conv's last inputs ``"short_conv"`` (Hyena
        layout) and the convolution state: the generator's (``"h"``, ...) when it is
        recurrent, else ``"max_length"``, the gated inputs so far ``"v": (batch,
        channels, position)`` (at least float32) and ``"taps"`` ``(channels, max_length)``,
        the kernel reversed in time: a cache of the parameters, computed once here in the
        current grad mode, like the recurrent generators' caches (make a new state after
        the parameters change)."""
        state: State = {"position": 0}
        if self.order is not None:
            state["short_conv"] = self.short_conv.init_state(batch_size, device=device, dtype=dtype)
        if self._recurrent:
            return {**state, **self.kernel.init_state(batch_size, device=device, dtype=dtype)}
        max_length = self.max_length if max_length is None else max_length
        self.kernel.check_length(max_length, "max_length")
        work = compute_dtype(dtype)
        taps = self._kernels(max_length, work)[0].to(device=device, dtype=work)
        history = torch.zeros(batch_size, self.kernel.channels, 0, device=device, dtype=work)
        return {**state, "max_length": max_length, "v": history, "taps": taps.flip(-1)}

    def _position(self, state: State) -> int:
        position = state.get("position")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ValueError(f"state: expected the dict returned by {type(self).__name__}.init_state (with "
                             f"'position'), got keys {sorted(state)}")
        return position

    def _token_streams(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, list, Any, State]:
        if self.order is None:
            return x_t.to(compute_dtype(x_t.dtype)), [None], None, state
        u, history = self.short_conv.step(self.in_proj(x_t), state["short_conv"])
        streams = u.split(self.d_model, dim=-1)
        return streams[-1], list(reversed(streams[1:-1])), streams[0], {**state, "short_conv": history}

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        position = self._position(state)
        v, pre_gates, post_gate, state = self._token_streams(x_t, state)
        if self._recurrent:
            w = v if pre_gates[0] is None else pre_gates[0] * v
            work = compute_dtype(w.dtype)
            conv, state = self.kernel.step(w.to(work), state)
            v = conv + self.skip.to(work) * w.to(work)
        else:
            if position >= state["max_length"]:
                raise ValueError(f"x_t: expected at most max_length={state['max_length']} tokens per sequence, "
                                 f"got token {position + 1}")
            taps = state["taps"][:, state["max_length"] - 1 - position:]  # k[t], ..., k[0] (skip on k[0])
            histories = []
            for i, pre in enumerate(pre_gates):
                rows = slice(i * self.d_model, (i + 1) * self.d_model)
                w = v if pre is None else pre * v
                # A new tensor per step (not an in-place write) keeps earlier states and the
                # autograd graph valid; the copy costs the same O(t d) as the sum below.
                history = torch.cat([state["v"][:, rows], w.to(state["v"].dtype).unsqueeze(-1)], dim=-1)
                v = torch.einsum("bds,ds->bd", history, taps[rows])
                histories.append(history)
            state = {**state, "v": torch.cat(histories, dim=1)}
        y = v if post_gate is None else post_gate * v.to(post_gate.dtype)
        return self._output(y.unsqueeze(-1), x_t.dtype)[:, 0], {**state, "position": position + 1}

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run a prompt ``x: (batch, length, d_model)`` in parallel; returns ``(y, state)``.

        The FFT convolution gives the outputs; a recurrent generator gives the final state
        (and what a non-empty state adds); otherwise the gated inputs become the history.
        A non-empty state that only a step can continue (a non-recurrent kernel, or the
        short convolution's history) falls back to the base class's step loop.
        """
        state = self.start_prefill(x, state)
        fresh = self._position(state) == 0
        if not fresh and (not self._recurrent or self.order is not None):
            return super().prefill(x, state)
        length = x.shape[1]
        self.kernel.check_length(length, "x")
        if not self._recurrent and length > state["max_length"]:
            raise ValueError(f"x: expected a length of at most the state's max_length={state['max_length']}, "
                             f"got {length}")
        u, v, pre_gates, post_gate = self._streams(x)
        if self._recurrent:
            w = v if pre_gates[0] is None else pre_gates[0] * v
            readout, state = self.kernel.prefill(w.to(compute_dtype(w.dtype)), state, fresh)
            y, _ = self._long_convs(v, pre_gates, post_gate, readout)
        else:
            y, inputs = self._long_convs(v, pre_gates, post_gate, keep_inputs=True)
            state = {**state, "v": torch.cat(inputs, dim=1).to(state["v"].dtype)}
        if self.order is not None:
            state = {**state, "short_conv": self.short_conv.prefill_state(u).to(state["short_conv"].dtype)}
        return self._output(y, x.dtype), {**state, "position": state["position"] + length}

    # -- accounting ---------------------------------------------------------------------
    def flops_breakdown(self, length: int) -> dict[str, int]:
        """Forward FLOPs for one sequence of ``length`` tokens (keys as in :class:`Mixer`):
        the generator's parts, the FFT convolutions, projections, gates and the skip."""
        n, d = check_positive_int("length", length), self.d_model
        kernel = self.kernel.flops(n)
        conv_fft = fft_conv_flops(n, d) if self.causal else fft_conv_flops(2 * n, d, causal=False)
        fft = kernel["fft"] + self.n_convs * conv_fft
        matmul, other = kernel["matmul"], kernel["other"] + 2 * n * d * self.n_convs  # skip D v
        if self.order is None:
            output = self.output.flops(n)
            return {"matmul": matmul + output["matmul"], "conv": 0, "fft": fft,
                    "other": other + output["other"] + 2 * n * d}  # + projection bias
        streams = self.order + 1
        matmul += 2 * n * (streams * d * d + d * d)  # in_proj, out_proj
        other += n * (streams * d + d) + n * streams * d  # projection and short-conv biases
        other += n * d * self.order  # the pre-gates and the post-gate
        return {"matmul": matmul, "conv": self.short_conv.flops(n), "fft": fft, "other": other}

    def state_size(self, length: int) -> int:
        """Numbers in the per-sequence state after ``length`` tokens: the short conv's inputs
        and either the generator's fixed state or ``length`` values per convolution channel
        (cached kernel taps and matrices are parameters, not counted)."""
        check_nonnegative_int("length", length)
        short = 0 if self.order is None else (self.order + 1) * self.d_model * (self.short_kernel - 1)
        conv = self.kernel.state_size() if self._recurrent else length * self.kernel.channels
        return short + conv

    def extra_repr(self) -> str:
        layout = "ssm" if self.order is None else f"hyena order={self.order}, short_kernel={self.short_kernel}"
        return f"{super().extra_repr()}, {layout}, max_length={self.max_length}"
