"""Short causal depthwise convolution (kernel size 2..8), as in H3, Hyena and M2.

Each channel is convolved with its own short filter over the past
``kernel_size - 1`` tokens.  The recurrent form keeps those tokens as its state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_positive_int
from ..kernels.short_conv import short_conv
from .parameter_cache import cached


class ShortConv(nn.Module):
    """Causal depthwise convolution over ``(batch, channels, length)``.

    ``y[c, t] = bias[c] + sum_{j<k} weight[c, j] * x[c, t - (k-1) + j]`` (zeros before t=0),
    i.e. ``weight[c, -1]`` multiplies the present token.
    """

    def __init__(self, channels: int, kernel_size: int = 3, *, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        factory = {"device": device, "dtype": dtype}
        bound = 1.0 / math.sqrt(kernel_size)
        self.weight = nn.Parameter(torch.empty(channels, kernel_size, **factory).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, **factory).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, channels, length)`` (any strides) -> same shape.

        Runs :func:`seqarch.kernels.short_conv.short_conv` (Triton kernels on CUDA tensors)."""
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"x: expected shape (batch, {self.channels}, length), got {tuple(x.shape)}"
            )
        # Under autocast conv1d would run in the autocast dtype; the kernel wants one dtype
        # for all, so cast like autocast does (the casts are differentiable).
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return short_conv(x.to(dtype), self.weight.to(dtype), bias)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> torch.Tensor:
        """The last ``kernel_size - 1`` inputs, zeros, oldest first: ``(batch, kernel_size - 1, channels)``.

        Time before channels: a step's window is then one contiguous block, and its sum over the
        window runs across rows, where over a last dimension of 2-7 taps it would cost twice as much."""
        return torch.zeros(batch_size, self.kernel_size - 1, self.channels,
                           device=device if device is not None else self.weight.device,
                           dtype=dtype if dtype is not None else self.weight.dtype)

    def step(self, x_t: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t: (batch, channels)``, ``history: (batch, kernel_size - 1, channels)`` -> ``(y_t, new_history)``."""
        window = torch.cat([history, x_t.unsqueeze(1)], dim=1)  # (batch, k, channels)
        # The taps as (k, channels), made once per weight version where no graph needs them.
        taps = cached(self, "taps_by_time", lambda: self.weight.t().contiguous(), params=(self.weight,))
        y_t = (window * taps).sum(1)
        if self.bias is not None:
            y_t = y_t + self.bias
        return y_t, window[:, 1:]

    def extend(self, x: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution of ``x: (batch, channels, length)`` continuing after ``history`` (the last
        ``kernel_size - 1`` inputs, as :meth:`init_state` and :meth:`step` keep them): ``(y, new_history)``,
        ``y`` of ``x``'s shape (a view), for a prefill from a non-empty state."""
        read = torch.cat([history.transpose(1, 2).to(x.dtype), x], dim=-1)
        return self(read)[..., self.kernel_size - 1:], self.prefill_state(read)

    def prefill_state(self, x: torch.Tensor) -> torch.Tensor:
        """The state after reading ``x: (batch, channels, length)``: its last k-1 inputs,
        ``(batch, kernel_size - 1, channels)``."""
        keep = self.kernel_size - 1
        if x.shape[-1] < keep:  # fewer inputs than the state holds: zeros before them, as init_state's
            x = F.pad(x, (keep - x.shape[-1], 0))
        return x[..., x.shape[-1] - keep:].transpose(1, 2).contiguous()

    def flops(self, length: int) -> int:
        """Forward FLOPs for one sequence."""
        return 2 * self.channels * self.kernel_size * length
