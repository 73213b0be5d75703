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
    convolution (on every stream, or, ``short_conv_streams="gates"``, on the pre-gates
    ``x_1 .. x_{N-1}`` only: H3's shift SSM on K); ``N - 1`` gated long convolutions
    ``v <- k_i * (x_{N-1-i} v) + D_i (x_{N-1-i} v)``; ``y = out_proj(dropout(x_0 v))``.
    ``head_dim = p > 1`` (order 2, H3's multi-head form, Fu et al., ICLR 2023): channels
    form ``d / p`` heads of ``p``; the pre-gate is an outer product
    ``kv[i, j] = k[i] v[j]`` within a head, the ``p * p`` products share their head's
    kernel, and the post-gate contracts ``y[j] = sum_i q[i] conv(kv)[i, j]``.

Recurrent form: with a recurrent generator (the SSMs) the state is the generator's,
of fixed size; otherwise the shell keeps the history of every long convolution's
input and a step at position ``t`` reads all ``t + 1`` values (exact, not flat).
A recurrent generator under ``N - 1 > 1`` convolutions (a distilled order-N Hyena)
steps by linearity: the state's readout plus ``k[0] u_t`` gives each convolution's
output in turn, then one generator step takes all their inputs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..checks import check_choice, check_dropout, check_int, check_nonnegative_int, check_positive_int
from ..modules.fft_conv import bidirectional_fft_conv, fft_conv, fft_conv_flops, filter_fft_flops
from ..modules.kernel_generator import KernelGenerator, check_param_dtype
from ..modules.mlp import GLUOutput
from ..modules.parameter_cache import cached
from ..modules.short_conv import ShortConv
from ..precision import compute_dtype
from .base import GRAPH_POSITION, Mixer, State, with_graph_position


class LongConv(Mixer):
    """Long-convolution layer: ``(batch, length, d_model)`` -> same shape.

    Args:
        d_model: width.
        kernel_options: options of ``kernel_class`` (the subclass's generator), which is
            built with ``channels = (d_model / head_dim) * (order - 1)`` (``d_model`` when
            ``order`` is None) and ``directions = 1`` (causal) or 2.
        causal: causal convolution; ``False``: a forward and a backward kernel, no
            recurrent form.
        order: ``None`` (SSM layer) or the Hyena order ``N >= 2`` (see the module).
        short_kernel: taps of the short convolution (Hyena layout only).
        short_conv_streams: ``"all"`` (Hyena) or ``"gates"`` (the pre-gates only, H3).
        head_dim: channels per head of the multi-head gating (order 2 only; 1: elementwise).
        dropout: after the GELU (SSM layout) or on the gated output (Hyena layout).
        device, dtype: of the parameters; kernels and FFTs run in ``compute_dtype``.
        layer_idx: see :class:`~seqarch.mixers.base.Mixer`.
    """

    kernel_class: ClassVar[type[KernelGenerator]]
    has_bidirectional_form = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A generator with a finite-state recurrence gives the layer a fixed-size state, and a step that
        # only counts positions; an explicit kernel's step reads its taps and history up to the position.
        cls.has_fixed_size_state = cls.kernel_class.recurrent
        cls.step_reads_position = not cls.kernel_class.recurrent

    def __init__(self, d_model: int, kernel_options: dict[str, Any], *, causal: bool = True,
                 order: int | None = None, short_kernel: int = 3, short_conv_streams: str = "all",
                 head_dim: int = 1, dropout: float = 0.0, device: Any = None, dtype: torch.dtype | None = None,
                 layer_idx: int | None = None) -> None:
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        check_param_dtype(dtype)
        check_dropout(dropout)
        self.order = None if order is None else check_int("order", order, minimum=2)
        self.n_convs = 1 if order is None else order - 1
        self.head_dim = check_positive_int("head_dim", head_dim)
        if head_dim > 1 and order != 2:
            raise ValueError(f"head_dim: multi-head gating needs order=2; expected 1, got {head_dim}")
        if d_model % head_dim:
            raise ValueError(f"head_dim: expected a divisor of d_model={d_model}, got {head_dim}")
        self.conv_width = d_model // head_dim  # kernels per long convolution (one per head)
        factory = {"device": device, "dtype": dtype}
        channels = self.n_convs * self.conv_width
        self.kernel = self.kernel_class(channels, directions=1 if causal else 2, **kernel_options, **factory)
        self.skip = nn.Parameter(torch.randn(channels, **factory))  # D: the present token's own weight
        if order is None:
            self.short_kernel = 0
            self.output = GLUOutput(d_model, dropout=dropout, **factory)
        else:
            self.short_kernel = check_positive_int("short_kernel", short_kernel)
            self.short_conv_streams = check_choice("short_conv_streams", short_conv_streams, ("all", "gates"))
            # The rows of in_proj's output that pass the short conv: every stream, or x_1 .. x_{N-1}.
            self.short_rows = ((0, (order + 1) * d_model) if short_conv_streams == "all"
                               else (d_model, order * d_model))
            self.in_proj = nn.Linear(d_model, (order + 1) * d_model, **factory)
            self.short_conv = ShortConv(self.short_rows[1] - self.short_rows[0], short_kernel, **factory)
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
    def _streams(self, x: torch.Tensor, history: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor | None, torch.Tensor, list, torch.Tensor | None]:
        """``x: (batch, length, d)`` -> ``(new_history, v, pre_gates, post_gate)``, channels second.

        With ``history`` (a state's short conv inputs, Hyena layout) the short conv continues
        from it and ``new_history`` is its state after ``x``; otherwise ``new_history`` is
        ``None``.  ``v``: the first long convolution's input, one pre-gate per long
        convolution (or ``None``)."""
        if self.order is None:
            return None, x.to(compute_dtype(x.dtype)).transpose(1, 2), [None], None
        u = self.in_proj(x).transpose(1, 2)
        low, high = self.short_rows
        short_in = u[:, low:high]
        if history is None:
            mixed, new_history = self.short_conv(short_in), None
        else:
            mixed, new_history = self.short_conv.extend(short_in, history)
        if self.short_conv_streams == "gates":
            mixed = torch.cat([u[:, :low], mixed, u[:, high:]], dim=1)
        streams = mixed.split(self.d_model, dim=1)
        return new_history, streams[-1], list(reversed(streams[1:-1])), streams[0]

    # -- gates --------------------------------------------------------------------------
    def _gate_in(self, gate: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
        """A long convolution's input: ``gate * v`` (``(batch, d, ...)``), or with heads the
        outer products ``(batch * p * p, d / p, ...)``: row ``(b, i, j)``, channel ``h``
        holds ``gate[b, h p + i] v[b, h p + j]``."""
        if gate is None:
            return v
        if self.head_dim == 1:
            return gate * v
        p, batch, rest = self.head_dim, gate.shape[0], gate.shape[2:]
        heads = gate.shape[1] // p  # explicit, not -1: a reshape cannot infer it from an empty batch
        outer = gate.reshape(batch, heads, p, 1, *rest) * v.to(gate.dtype).reshape(batch, heads, 1, p, *rest)
        return outer.movedim(1, 3).reshape(batch * p * p, self.conv_width, *rest)

    def _gate_out(self, gate: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """The post-gate: ``gate * y``, or with heads ``out[b, h p + j] = sum_i gate[b, h p + i]
        y[(b, i, j), h]`` (a multiply and a sum, as H3 does it)."""
        if gate is None:
            return y
        if self.head_dim == 1:
            return gate * y.to(gate.dtype)
        p, batch, rest = self.head_dim, gate.shape[0], gate.shape[2:]
        y = y.to(gate.dtype).reshape(batch, p, p, self.conv_width, *rest)
        q = gate.reshape(batch, self.conv_width, p, *rest).movedim(2, 1).unsqueeze(2)  # (b, p_i, 1, h, ...)
        return (q * y).sum(1).movedim(1, 2).reshape(batch, self.d_model, *rest)

    def _output(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``y: (batch, d, ...)`` channels second -> ``(batch, ..., d)`` in ``dtype``."""
        # Contiguous before the elementwise output stage: GELU over a transposed view runs
        # strided and the projection would copy it anyway.
        y = y.movedim(1, -1).contiguous()
        y = self.output(y) if self.order is None else self.out_proj(self.dropout(y))
        return y.to(dtype)

    def _kernels(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """``(directions, channels, length)`` in ``compute_dtype(dtype)`` with the skip on the
        forward kernel's tap 0 (``k * v + D v``, fused into the convolution).  Outside training
        computed once per parameter version (:func:`~seqarch.modules.parameter_cache.cached`)."""
        return cached(self, ("kernels", length, dtype), lambda: self._fresh_kernels(length, dtype))

    def _fresh_kernels(self, length: int, dtype: torch.dtype) -> torch.Tensor:
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
        fused = self.head_dim == 1  # elementwise gates run inside the FFT convolution
        for i, pre in enumerate(pre_gates):
            rows = slice(i * self.conv_width, (i + 1) * self.conv_width)
            k_i = k[:, rows]
            post = post_gate if fused and i == self.n_convs - 1 and readout is None else None
            if not fused:
                v, pre = self._gate_in(pre, v), None
            if keep_inputs:
                inputs.append(v if pre is None else pre * v)
            if self.causal:
                v = fft_conv(v, k_i[0], pre_gate=pre, post_gate=post)
            else:
                v = bidirectional_fft_conv(v, k_i[0], k_i[1], pre_gate=pre, post_gate=post)
            if readout is not None:  # what the incoming state adds to this convolution
                v = v + readout[:, rows].to(v.dtype)
        if not fused or readout is not None:
            v = self._gate_out(post_gate, v)
        return v, inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, length, d_model)`` -> same shape in ``x.dtype``; ``length <= max_length``."""
        self.check_sequence(x)
        if x.shape[1] == 0:
            raise ValueError("x: expected a length of at least 1 (a long convolution needs a position), got 0")
        self.kernel.check_length(x.shape[1], "x")
        _, v, pre_gates, post_gate = self._streams(x)
        return self._output(self._long_convs(v, pre_gates, post_gate)[0], x.dtype)

    # -- recurrent form -----------------------------------------------------------------
    def _init_state(self, batch_size: int, *, device: Any, dtype: torch.dtype, max_length: int | None) -> State:
        """``"position"`` (tokens read), the short conv's last inputs ``"short_conv"`` (Hyena
        layout) and the convolution state: the generator's (``"h"``, ...) when it is
        recurrent, else ``"max_length"``, the gated inputs so far ``"v": (batch,
        channels, position)`` (at least float32; a view of ``"buffer"``, preallocated for
        ``max_length`` tokens and written in place) and ``"taps"`` ``(channels, max_length)``,
        the kernel reversed in time: a cache of the parameters, computed once here in the
        current grad mode, like the recurrent generators' caches (make a new state after
        the parameters change).  With heads, the convolution state has ``batch * p * p``
        rows, one per product ``(b, i, j)``."""
        state: State = {"position": 0}
        if self.order is not None:
            state["short_conv"] = self.short_conv.init_state(batch_size, device=device, dtype=dtype)
        rows = batch_size * self.head_dim ** 2  # with heads, each (i, j) product is a row of its own
        if self._recurrent:
            return {**state, **self.kernel.init_state(rows, device=device, dtype=dtype)}
        max_length = self.max_length if max_length is None else max_length
        self.kernel.check_length(max_length, "max_length")
        work = compute_dtype(dtype)
        taps = self._kernels(max_length, work)[0].to(device=device, dtype=work)
        buffer = torch.zeros(rows, self.kernel.channels, max_length, device=device, dtype=work)
        return {**state, "max_length": max_length, "buffer": buffer, "v": buffer[..., :0], "taps": taps.flip(-1)}

    def _position(self, state: State) -> int:
        position = state.get("position")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ValueError(f"state: expected the dict returned by {type(self).__name__}.init_state (with "
                             f"'position'), got keys {sorted(state)}")
        return position

    def _token_streams(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, list, Any, State]:
        if self.order is None:
            return x_t.to(compute_dtype(x_t.dtype)), [None], None, state
        u = self.in_proj(x_t)
        low, high = self.short_rows
        mixed, history = self.short_conv.step(u[:, low:high], state["short_conv"])
        if self.short_conv_streams == "gates":
            mixed = torch.cat([u[:, :low], mixed, u[:, high:]], dim=-1)
        streams = mixed.split(self.d_model, dim=-1)
        return streams[-1], list(reversed(streams[1:-1])), streams[0], {**state, "short_conv": history}

    def step_constants(self, state: State) -> dict[str, Any]:
        """A recurrent generator's step matrices (``"matrices"``) and, with several convolutions, their
        tap 0 plus the skip (``"tap0"``), in the recurrent state's real dtype, once per parameter
        version; none for an explicit kernel (its taps are in the state)."""
        h = state.get("h")
        if not self._recurrent or not isinstance(h, torch.Tensor):
            return {}
        # The generator's state, complex (DPLR) or its real and imaginary parts (diagonal), has the step's
        # compute dtype as its real dtype.
        work = h.real.dtype
        # Both are cached already (the generator's step matrices, the kernels by length): no cache over them.
        constants = {"matrices": self.kernel.step_matrices(work)}
        if self.n_convs > 1:
            constants["tap0"] = self._kernels(1, work)[0, :, 0]  # k[0] + D
        return constants

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        position = self._position(state)
        v, pre_gates, post_gate, state = self._token_streams(x_t, state)
        if self._recurrent and self.n_convs == 1:
            w = self._gate_in(pre_gates[0], v)
            w = w.to(compute_dtype(w.dtype))
            conv, state = self.kernel.step(w, state, self.constants_of(state)["matrices"])
            v = torch.addcmul(conv, self.skip.to(w.dtype), w)
        elif self._recurrent:
            # Linear and time-invariant: conv_t = (the old state's readout) + k[0] u_t, so each
            # convolution's output, and so the next one's input, comes before the state moves.
            work = compute_dtype(v.dtype)
            constants = self.constants_of(state)
            rows_in = v.shape[0] * self.head_dim ** 2
            readout, _ = self.kernel.step(v.new_zeros(rows_in, self.kernel.channels, dtype=work), state,
                                          constants["matrices"])
            tap0 = constants["tap0"]
            inputs = []
            for i, pre in enumerate(pre_gates):
                rows = slice(i * self.conv_width, (i + 1) * self.conv_width)
                inputs.append(self._gate_in(pre, v).to(work))
                v = readout[:, rows] + tap0[rows] * inputs[-1]
            _, state = self.kernel.step(torch.cat(inputs, dim=-1), state, constants["matrices"])
        else:
            at = state.get(GRAPH_POSITION)  # a graph state's position, on the device (bounded by graph_steps_left)
            if at is None and position >= state["max_length"]:
                raise ValueError(f"x_t: expected at most max_length={state['max_length']} tokens per sequence, "
                                 f"got token {position + 1}")
            # Written in place, so a token costs O(t d) reads and no copy of the history; under
            # grad mode a copy first keeps earlier states and the autograd graph valid.
            buffer = state["buffer"].clone() if torch.is_grad_enabled() else state["buffer"]
            if at is None:
                history = buffer[..., :position + 1]
                taps = state["taps"][:, state["max_length"] - 1 - position:]  # k[t], ..., k[0] (skip on k[0])
            else:
                # The same work at every position: the whole buffer (zeros past the position) against the
                # taps gathered for it, taps[:, max_length - 1 - t + j] at column j <= t, zero after.
                history, length = buffer, state["max_length"]
                columns = torch.arange(length, device=at.device)
                index = (columns + (length - 1) - at).clamp(max=length - 1)
                taps = state["taps"].index_select(-1, index) * (columns <= at)
            for i, pre in enumerate(pre_gates):
                rows = slice(i * self.conv_width, (i + 1) * self.conv_width)
                gated = self._gate_in(pre, v).unsqueeze(-1)
                if at is None:
                    # A slice, not an index: a compiled step then takes any position without specialising on it.
                    history[:, rows, position:position + 1] = gated
                else:
                    history[:, rows].index_copy_(-1, at, gated.to(history.dtype))
                # A product and a sum: on a CPU the einsum's batched (batch x t) @ (t x 1) products took
                # 3-5x longer at t = 128-383 (and it fuses into one loop when compiled).
                v = (history[:, rows] * taps[rows]).sum(-1)
            if at is not None:
                at.add_(1)
            state = {**state, "buffer": buffer, "v": history}
        y = self._gate_out(post_gate, v)  # (batch, d): the output stage takes it without a length axis
        y = self.output(y) if self.order is None else self.out_proj(self.dropout(y))
        return y.to(x_t.dtype), {**state, "position": position + 1}

    # A recurrent generator's step only counts positions; an explicit kernel's reads its taps and history
    # up to the position, from the device in a graph state.
    has_graph_step = True

    def graph_state(self, state: State) -> State:
        """A recurrent generator's state as it is; an explicit kernel's with its position also on the
        device (:func:`~seqarch.mixers.base.with_graph_position`) and ``"v"`` the whole buffer (zeros
        past the position), as its graph step reads them."""
        if self._recurrent:
            return state
        return {**with_graph_position(state, state["buffer"].device, counter="position"), "v": state["buffer"]}

    def graph_steps_left(self, state: State) -> int | None:
        return None if self._recurrent else state["max_length"] - state["position"]

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run a prompt ``x: (batch, length, d_model)`` in parallel; returns ``(y, state)``.

        The FFT convolution gives the outputs; a recurrent generator gives the final state
        and what a non-empty state adds (the short conv continues from its history);
        otherwise the gated inputs become the history.  A non-empty state of a
        non-recurrent kernel falls back to the base class's step loop.
        """
        state = self.start_prefill(x, state)
        fresh = self._position(state) == 0
        if not fresh and not self._recurrent:
            return super().prefill(x, state)
        length = x.shape[1]
        self.kernel.check_length(length, "x")
        if not self._recurrent and length > state["max_length"]:
            raise ValueError(f"x: expected a length of at most the state's max_length={state['max_length']}, "
                             f"got {length}")
        # A fresh state's short conv history is zeros, as the convolution's own padding would be.
        history = None if self.order is None else state["short_conv"]
        short_conv_state, v, pre_gates, post_gate = self._streams(x, history)
        work = compute_dtype(v.dtype)
        if self._recurrent and self.n_convs == 1:
            w = self._gate_in(pre_gates[0], v)
            readout, state = self.kernel.prefill(w.to(work), state, fresh)
            y, _ = self._long_convs(v, pre_gates, post_gate, readout)
        elif self._recurrent:
            # Later convolutions' inputs need the earlier outputs, so the state's readout
            # (independent of the input: the response to zeros) comes first.
            rows = v.shape[0] * self.head_dim ** 2
            zeros = v.new_zeros(rows, self.kernel.channels, length, dtype=work)
            readout = None if fresh else self.kernel.prefill(zeros, state, fresh)[0]
            y, inputs = self._long_convs(v, pre_gates, post_gate, readout, keep_inputs=True)
            _, state = self.kernel.prefill(torch.cat(inputs, dim=1).to(work), state, fresh)
        else:
            y, inputs = self._long_convs(v, pre_gates, post_gate, keep_inputs=True)
            buffer = state["buffer"].clone() if torch.is_grad_enabled() else state["buffer"]
            for i, gated in enumerate(inputs):
                buffer[:, i * self.conv_width:(i + 1) * self.conv_width, :length] = gated
            state = {**state, "buffer": buffer, "v": buffer[..., :length]}
        if self.order is not None:
            state = {**state, "short_conv": short_conv_state.to(state["short_conv"].dtype)}
        return self._output(y, x.dtype), {**state, "position": state["position"] + length}

    # -- accounting ---------------------------------------------------------------------
    def flops_breakdown(self, length: int) -> dict[str, int]:
        """Forward FLOPs per sequence of ``length`` tokens (keys as in :class:`Mixer`): the FFT
        convolutions of the inputs, projections, gates and the skip.  The kernels and their FFTs
        are made once per call for the whole batch: :meth:`shared_flops_breakdown`."""
        n, d, p = check_positive_int("length", length), self.d_model, self.head_dim
        rows = d * p  # channels of each long convolution: d, or (d / p heads) * (p * p products)
        conv = fft_conv_flops(n, rows) if self.causal else fft_conv_flops(2 * n, rows, causal=False)
        fft, other = self.n_convs * conv["fft"], self.n_convs * (conv["other"] + 2 * n * rows)  # skip D v
        if self.order is None:
            output = self.output.flops(n)
            return {"matmul": output["matmul"], "conv": 0, "fft": fft,
                    "other": other + output["other"] + 2 * n * d}  # + projection bias
        streams = self.order + 1
        matmul = 2 * n * (streams * d * d + d * d)  # in_proj, out_proj
        other += n * (streams * d + d) + n * self.short_conv.channels  # projection and short-conv biases
        # The pre-gates and the post-gate; with heads, the outer product and the multiply-and-sum.
        other += n * d * self.order if p == 1 else n * rows + 2 * n * rows
        return {"matmul": matmul, "conv": self.short_conv.flops(n), "fft": fft, "other": other}

    def shared_flops_breakdown(self, length: int) -> dict[str, int]:
        """Once per call whatever the batch: the generator's kernels (:meth:`KernelGenerator.flops`)
        and the FFT of each convolution's filter (one per kernel, shared by the batch)."""
        n = check_positive_int("length", length)
        kernel = self.kernel.flops(n)
        filters = self.n_convs * (filter_fft_flops(n, self.conv_width) if self.causal
                                  else filter_fft_flops(2 * n, self.conv_width, causal=False))
        return {"matmul": kernel["matmul"], "conv": 0, "fft": kernel["fft"] + filters, "other": kernel["other"]}

    def state_size(self, length: int) -> int:
        """Numbers in the per-sequence state after ``length`` tokens: the short conv's inputs
        and either the generator's fixed state or ``length`` values per convolution channel
        (cached kernel taps and matrices are parameters, not counted)."""
        check_nonnegative_int("length", length)
        short = 0 if self.order is None else self.short_conv.channels * (self.short_kernel - 1)
        conv = self.kernel.state_size() if self._recurrent else length * self.kernel.channels
        return short + conv * self.head_dim ** 2

    def extra_repr(self) -> str:
        layout = "ssm" if self.order is None else (
            f"hyena order={self.order}, short_kernel={self.short_kernel}, "
            f"short_conv_streams={self.short_conv_streams!r}, head_dim={self.head_dim}")
        return f"{super().extra_repr()}, {layout}, max_length={self.max_length}"
