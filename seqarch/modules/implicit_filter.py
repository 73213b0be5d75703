"""Implicit long-convolution filters (Hyena, Poli et al., ICML 2023; used by M2).

A filter of length up to ``max_length`` per channel is not stored tap by tap but
evaluated from a small network of the position: positional features of
``t / max_length`` (``t`` itself plus sine/cosine features), an MLP with sine
activations, and an exponential decay window per channel.  The parameter count is
independent of the length.

Positions are normalised by ``max_length``, never by the requested length, so the
filter of length ``L`` is exactly the first ``L`` taps of the filter of length
``max_length``: a recurrent step at position ``t`` uses the same taps as the full
forward.

:class:`ImplicitKernel` is the kernel generator a long-convolution layer uses: one
``ImplicitFilter`` per direction (M2-BERT trains separate forward and backward filters).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_nonnegative_int, check_odd_int, check_positive_int, check_range_pair, check_real
from ..precision import compute_dtype
from .kernel_generator import DEFAULT_LR_SCALE, KernelGenerator, tag_optim


def check_decay(argument: str, value) -> tuple[float, float]:
    """A ``(fast, slow)`` decay pair: positive numbers with ``fast <= slow``."""
    return check_range_pair(argument, value, what="(fast, slow)")


def check_emb_dim(argument: str, value) -> int:
    """The positional-feature width: odd and at least 3 (t, one cosine, one sine)."""
    return check_odd_int(argument, value, minimum=3)


class ImplicitFilter(nn.Module):
    """Hyena implicit filter: ``forward(length) -> (channels, length)``.

    ``h[c, t] = MLP(z(t / max_length))[c] * exp(-|delta_c| t / max_length)`` where
    ``z`` holds ``t / max_length`` and ``(emb_dim - 1) / 2`` cosine and sine
    features of ``2 pi t / max_length`` and the MLP is
    ``Linear(emb_dim, order), sin, (Linear(order, order), sin) x num_inner,
    Linear(order, channels, bias=False)`` with trainable sine frequencies.  The
    decay rates ``delta_c`` are spread over channels so that the window falls to
    ``target`` after ``decay[0]`` (fastest channel) to ``decay[1]`` (slowest) of
    ``max_length`` (Hyena's ExponentialModulation).

    Every parameter carries ``_optim = {"lr_scale": lr_scale, "weight_decay": 0.0}``: Hyena
    trains its filters with their own learning rate and no weight decay.

    The filter is evaluated in at least float32 whatever the parameter dtype, since
    it feeds an FFT convolution that runs in float32.
    """

    def __init__(
        self,
        channels: int,
        max_length: int,
        *,
        order: int = 64,
        emb_dim: int = 5,
        num_inner: int = 2,
        sine_freq: float = 1.0,
        decay: tuple[float, float] = (0.3, 1.5),
        target: float = 1e-2,
        lr_scale: float = DEFAULT_LR_SCALE,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.max_length = check_positive_int("max_length", max_length)
        self.order = check_positive_int("order", order)
        self.emb_dim = check_emb_dim("emb_dim", emb_dim)
        self.num_inner = check_nonnegative_int("num_inner", num_inner)
        check_real("sine_freq", sine_freq, low=0.0, expected="a positive number")
        self.decay = check_decay("decay", decay)
        self.target = check_real("target", target, low=0.0, high=1.0, expected="a number in (0, 1)")
        self.lr_scale = check_real("lr_scale", lr_scale, low=0.0, expected="a positive multiple of train.lr")

        factory = {"device": device, "dtype": dtype}
        widths = [emb_dim] + [order] * (num_inner + 1)
        self.hidden = nn.ModuleList(nn.Linear(a, b, **factory) for a, b in itertools.pairwise(widths))
        # One trainable frequency per hidden unit and layer (Hyena's Sin activation).
        self.freqs = nn.ParameterList(
            nn.Parameter(torch.full((order,), float(sine_freq), **factory)) for _ in self.hidden
        )
        self.output = nn.Linear(order, channels, bias=False, **factory)
        tag_optim(self.parameters(), self.lr_scale)

    def check_length(self, length: int, argument: str = "length") -> int:
        """Return ``length`` if ``1 <= length <= max_length``, else raise a ValueError."""
        check_positive_int(argument, length)
        if length > self.max_length:
            raise ValueError(f"{argument}: expected at most max_length={self.max_length}, got {length}")
        return length

    def positions(self, length: int, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, z)``: ``t = pos / max_length`` as ``(length, 1)`` and features ``(length, emb_dim)``.

        Computed on the fly rather than stored as buffers, so that casting the module
        (``.bfloat16()``) never rounds the positions.
        """
        pos = torch.arange(length, device=device, dtype=dtype).unsqueeze(-1)
        t = pos / self.max_length
        bands = (self.emb_dim - 1) // 2
        freqs = torch.linspace(1e-4, bands - 1, bands, device=device, dtype=dtype)
        angle = freqs * (2 * math.pi * t)
        return t, torch.cat([t, torch.cos(angle), -torch.sin(angle)], dim=-1)

    def decay_rates(self, device, dtype: torch.dtype) -> torch.Tensor:
        """``|delta_c|`` for each channel: ``(channels,)``."""
        fast, slow = self.decay
        log_target = math.log(self.target)
        return torch.linspace(log_target / slow, log_target / fast, self.channels, device=device, dtype=dtype).abs()

    def forward(self, length: int) -> torch.Tensor:
        """The first ``length`` taps: ``(channels, length)`` in at least float32."""
        self.check_length(length)
        ref = self.output.weight
        work = compute_dtype(ref.dtype)
        t, h = self.positions(length, ref.device, work)
        for layer, freq in zip(self.hidden, self.freqs):
            bias = layer.bias.to(work) if layer.bias is not None else None
            h = torch.sin(freq.to(work) * F.linear(h, layer.weight.to(work), bias))
        h = F.linear(h, self.output.weight.to(work))  # (length, channels)
        window = torch.exp(-t * self.decay_rates(ref.device, work))
        return (h * window).t()

    def flops(self, length: int) -> dict[str, int]:
        """Forward FLOPs of ``forward(length)``: ``{"matmul": ..., "other": ...}``.

        ``matmul`` is the MLP's matrix products (what FlopCounterMode counts);
        ``other`` the bias adds, sine activations (frequency multiply + sine), the
        positional features and the decay window (one FLOP per elementwise op).
        """
        check_positive_int("length", length)
        e, o, c, n = self.emb_dim, self.order, self.channels, len(self.hidden)
        matmul = 2 * length * (e * o + (n - 1) * o * o + o * c)
        features = length * (2 + 2 * (e - 1))  # t, then angle and cos/sin per band
        activations = n * 3 * length * o  # bias add, frequency multiply, sine
        window = 3 * length * c  # t * delta, exp, multiply
        return {"matmul": matmul, "other": features + activations + window}

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, max_length={self.max_length}, order={self.order}, "
            f"emb_dim={self.emb_dim}, num_inner={self.num_inner}, decay={self.decay}"
        )


class ImplicitKernel(KernelGenerator):
    """Implicit-filter kernel generator: ``forward(length) -> (directions, channels, length)``.

    One :class:`ImplicitFilter` per direction (``filters[0]`` causal, ``filters[1]``
    backward in time), positions normalised by ``max_length``.  No finite-state
    recurrence: a layer steps it by keeping the history of its input.

    Args: ``channels``, ``max_length``, ``directions`` and the :class:`ImplicitFilter`
    options (``order``, ``emb_dim``, ``decay``, ``lr_scale``, ...).
    """

    def __init__(self, channels: int, *, max_length: int, directions: int = 1, lr_scale: float = DEFAULT_LR_SCALE,
                 **filter_options) -> None:
        super().__init__(channels, directions=directions, max_length=max_length)
        self.filters = nn.ModuleList(ImplicitFilter(channels, max_length, lr_scale=lr_scale, **filter_options)
                                     for _ in range(directions))

    def forward(self, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(directions, channels, length)`` in at least float32 (the filters' dtype)."""
        self.check_length(length)
        return torch.stack([filt(length) for filt in self.filters])

    def flops(self, length: int) -> dict[str, int]:
        parts = [filt.flops(length) for filt in self.filters]
        return {"matmul": sum(p["matmul"] for p in parts), "fft": 0, "other": sum(p["other"] for p in parts)}
