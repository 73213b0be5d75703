"""Long convolutions by FFT, the front end shared by S4, S4D and Monarch Mixer.

A causal convolution of length-L sequences by a length-L filter is computed as a
circular convolution of size 2L (zero padding keeps the wrap-around out), which
costs O(L log L) instead of O(L^2).  A bidirectional (non-causal) filter is a pair
of causal filters, one run forwards and one backwards in time, packed into one
circular filter of size 2L as in S4 and M2-BERT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels.fft_conv import fft_conv as _kernel_fft_conv


def _check_conv_args(u: torch.Tensor, k: torch.Tensor, filter_name: str, max_len: int) -> None:
    if u.dim() < 2:
        raise ValueError(f"u: expected rank >= 2 (..., channels, length), got shape {tuple(u.shape)}")
    if k.dim() != 2:
        raise ValueError(f"{filter_name}: expected rank 2 (channels, length), got shape {tuple(k.shape)}")
    if k.shape[0] != u.shape[-2]:
        raise ValueError(
            f"{filter_name}: expected {u.shape[-2]} channels to match u, got {k.shape[0]}"
        )
    if k.shape[-1] > max_len:
        raise ValueError(
            f"{filter_name}: expected a filter length of at most {max_len}, got {k.shape[-1]}"
        )


def fft_conv(
    u: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    pre_gate: torch.Tensor | None = None,
    post_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise long convolution by FFT, optionally gated: ``post_gate * conv(pre_gate * u, k)``.

    Args:
        u: ``(..., channels, length)`` input.
        k: ``(channels, filter_length)`` filter.  Causal: ``filter_length <= length``
            and ``y[t] = sum_{s<=t} k[s] u[t-s]`` (FFT of size 2L).  Circular
            (``causal=False``): ``filter_length <= length`` and the convolution wraps
            around modulo ``length``.
        pre_gate, post_gate: like ``u``, or None (Hyena / M2 gating, fused in the kernel).
    Returns:
        ``(..., channels, length)`` in ``u``'s dtype; computed in at least float32.

    Every call goes through :func:`seqarch.kernels.fft_conv.fft_conv` with the leading
    dimensions folded into its batch, so its dispatch rule holds here unchanged: CUDA
    tensors at the lengths and dtypes its Triton kernel takes (powers of two from 256 to
    65536, float32 / bfloat16 / float16) run the Monarch FFT kernel, other calls its rfft
    twin under ``auto``, and forced ``triton`` raises ``ValueError`` for a call the kernel
    cannot take.
    """
    length = u.shape[-1]
    _check_conv_args(u, k, "k", length)
    gates = {"pre_gate": pre_gate, "post_gate": post_gate}
    for name, gate in gates.items():
        if gate is not None and gate.shape != u.shape:
            raise ValueError(f"{name}: expected shape {tuple(u.shape)} like u, got {tuple(gate.shape)}")
    # the kernel takes (batch, channels, length): fold the leading dimensions into one (counted,
    # not -1, which reshape cannot infer when channels is 0)
    flat_shape = (math.prod(u.shape[:-2]), *u.shape[-2:])
    flat = {name: None if g is None else g.reshape(flat_shape) for name, g in gates.items()}
    return _kernel_fft_conv(u.reshape(flat_shape), k, causal=causal, **flat).reshape(u.shape)


def two_sided_filter(k_forward: torch.Tensor, k_backward: torch.Tensor) -> torch.Tensor:
    """Pack a bidirectional filter pair into one circular filter of size 2L.

    ``y[t] = sum_{s>=0} k_forward[s] u[t-s] + sum_{s>=1} k_backward[s] u[t+s]``
    equals the circular convolution of ``u`` zero-padded to 2L with the returned
    ``(channels, 2L)`` filter (``k_backward[0]`` is unused: the present token is
    counted once, by ``k_forward``).
    """
    if k_backward.shape != k_forward.shape:
        raise ValueError(
            f"k_backward: expected shape {tuple(k_forward.shape)} like k_forward, got {tuple(k_backward.shape)}"
        )
    backward = torch.flip(k_backward[..., 1:], dims=[-1])  # taps for offsets L-1 .. 1
    return torch.cat([k_forward, torch.zeros_like(k_forward[..., :1]), backward], dim=-1)


def bidirectional_fft_conv(
    u: torch.Tensor,
    k_forward: torch.Tensor,
    k_backward: torch.Tensor,
    *,
    pre_gate: torch.Tensor | None = None,
    post_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Non-causal long convolution: a forward filter on the past, a backward one on the future.

    Args:
        u: ``(..., channels, length)``.
        k_forward, k_backward: ``(channels, length)``.
        pre_gate, post_gate: like ``u`` or None: ``post_gate * conv(pre_gate * u)`` as in :func:`fft_conv`.
    Returns:
        ``(..., channels, length)``; see :func:`two_sided_filter` for the formula.
    """
    length = u.shape[-1]
    _check_conv_args(u, k_forward, "k_forward", length)
    if k_forward.shape[-1] != length:
        raise ValueError(f"k_forward: expected filter length {length}, got {k_forward.shape[-1]}")

    def padded(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else F.pad(x, (0, length))

    conv = fft_conv(
        padded(u), two_sided_filter(k_forward, k_backward), causal=False,
        pre_gate=padded(pre_gate), post_gate=padded(post_gate),
    )
    return conv[..., :length]


def ssm_conv(u: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve ``u: (..., channels, length)`` by one causal kernel or a forward/backward pair.

    ``kernels``: ``(1, channels, length)`` (causal, :func:`fft_conv`) or
    ``(2, channels, length)`` (bidirectional, :func:`bidirectional_fft_conv`), as the
    SSM layers produce them.
    """
    if kernels.dim() != 3 or kernels.shape[0] not in (1, 2):
        raise ValueError(f"kernels: expected shape (1 or 2, channels, length), got {tuple(kernels.shape)}")
    if kernels.shape[0] == 1:
        return fft_conv(u, kernels[0])
    return bidirectional_fft_conv(u, kernels[0], kernels[1])


def fft_flops(n: int, channels: int) -> int:
    """FLOPs of one real FFT of size ``n`` over ``channels`` rows: half of ``5 n log2 n``."""
    return int(channels * 2.5 * n * math.log2(max(n, 2)))


def fft_conv_flops(length: int, channels: int, *, causal: bool = True) -> dict[str, int]:
    """Per-sequence FLOPs of :func:`fft_conv` on ``channels`` rows: ``"fft"``, the input's rFFT and
    the inverse; ``"other"``, the pointwise product with the filter's spectrum.

    The filter's own FFT is done once per call whatever the batch: :func:`filter_fft_flops`.
    """
    n = 2 * length if causal else length
    return {"fft": 2 * fft_flops(n, channels), "other": 6 * channels * (n // 2 + 1)}  # complex multiply: 6


def filter_fft_flops(length: int, channels: int, *, causal: bool = True) -> int:
    """FLOPs of the filter's FFT in :func:`fft_conv` (``channels`` filters), once per call."""
    return fft_flops(2 * length if causal else length, channels)
