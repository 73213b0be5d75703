"""Short causal depthwise convolution (1 to 8 taps): Triton forward and backward kernels.

The short convolution of H3 (Fu et al., "Hungry Hungry Hippos", ICLR 2023), Hyena
(Poli et al., 2023) and Monarch Mixer (Fu et al., NeurIPS 2023): every channel has
its own filter over the present token and the ``kernel_size - 1`` tokens before it,

    ``y[b, c, t] = bias[c] + sum_{j < k} weight[c, j] * x[b, c, t - (k - 1) + j]``

with zeros before ``t = 0`` (so ``weight[c, -1]`` multiplies the present token).

The op is memory bound (``2 k`` flops per element read), so the kernels read each
input once per tile: a program owns a ``(channels, length)`` tile, reads its ``k``
shifted windows (which overlap, so all but the first hit the cache) and accumulates
in float32.  The backward kernel forms the input gradient (the same stencil run
backwards in time) and, in the same pass over ``dy`` and ``x``, per-tile partial
sums of the weight and bias gradients, which a deterministic ``sum`` then reduces
(no atomics).  Inputs may have any strides: M2 hands over ``in_proj(x).transpose(1, 2)``
(channels contiguous) and the kernels read it in place.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .backend import device_guard, interpreting, select, triton_available
from .tensor_checks import check_dtype, check_like, dtype_names, empty_result

MAX_TRITON_KERNEL_SIZE = 8
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPES = (*TRITON_DTYPES, torch.float64)


def short_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The PyTorch twin of :func:`short_conv` (same arguments, same result): a grouped ``conv1d``."""
    kernel_size = weight.shape[1]
    padded = F.pad(x, (kernel_size - 1, 0))
    return F.conv1d(padded, weight.unsqueeze(1), bias, groups=weight.shape[0])


def offtheshelf_short_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The off-the-shelf baseline for benchmarks: cuDNN's depthwise ``conv1d(groups=channels)``.

    Same layout as :func:`short_conv`; the left padding comes from ``conv1d``'s own
    symmetric ``padding`` with the ``k - 1`` extra outputs on the right dropped.
    """
    kernel_size, channels = weight.shape[1], weight.shape[0]
    y = F.conv1d(x, weight.unsqueeze(1), bias, padding=kernel_size - 1, groups=channels)
    return y[..., : x.shape[-1]]


def short_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise convolution with a short filter, ``y[b, c, t] = bias[c] + sum_j weight[c, j] x[b, c, t-k+1+j]``.

    Args:
        x: ``(batch, channels, length)``, float16, bfloat16, float32 or float64, any strides.
        weight: ``(channels, kernel_size)``, same dtype and device as ``x``; ``weight[:, -1]``
            multiplies the present token.
        bias: ``(channels,)`` or None, any stride (a column view of a parameter matrix is read in place).

    Returns:
        ``(batch, channels, length)`` in ``x``'s dtype (contiguous).

    Backends (:mod:`seqarch.kernels.backend`): the Triton kernels (float32 accumulation) run
    kernel sizes 1 to ``MAX_TRITON_KERNEL_SIZE = 8`` in float16, bfloat16 and float32
    (:func:`triton_limits`).  A longer filter (the job of the FFT convolution) or float64
    runs the PyTorch twin (:func:`short_conv_reference`) under ``auto`` and raises
    ``ValueError`` under forced ``triton``.  Zero batch, channels or length: an empty result.
    """
    _check_inputs(x, weight, bias)
    if x.numel() == 0:
        return empty_result(x.shape, x, x, weight, bias)
    if select("short_conv", x, triton_limits(x, weight, bias)) == "triton":
        return ShortConvFunction.apply(x, weight, bias)
    return short_conv_reference(x, weight, bias)


def triton_limits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> str | None:
    """Why the Triton path cannot take ``short_conv(x, weight, bias)``, or None when it can."""
    if weight.shape[1] > MAX_TRITON_KERNEL_SIZE:
        return (f"weight: expected kernel_size <= {MAX_TRITON_KERNEL_SIZE} for the Triton path, "
                f"got {weight.shape[1]}")
    if x.dtype not in TRITON_DTYPES:
        return f"x: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {x.dtype}"
    return None


def _check_inputs(x, weight, bias) -> None:
    """Raise a ValueError naming the first bad argument."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected rank 3 (batch, channels, length), got {got}")
    check_dtype("x", x, DTYPES)
    channels = x.shape[1]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != channels or weight.shape[1] < 1:
        got = f"shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight: expected shape ({channels}, kernel_size >= 1), got {got}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (channels,)):
        got = f"shape {tuple(bias.shape)}" if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias: expected shape ({channels},) or None, got {got}")
    check_like("x", x, {"weight": weight, "bias": bias})


class _Tile(NamedTuple):
    block_c: int  # channels per program
    block_l: int  # positions per program
    num_warps: int


def _tile(x: torch.Tensor) -> _Tile:
    """Tile sizes: long along the contiguous axis, so loads coalesce (and, in the
    interpreter, few large programs: each program costs a fixed Python overhead)."""
    channels, length = x.shape[1], x.shape[2]
    cap_c, cap_l = triton.next_power_of_2(channels), triton.next_power_of_2(length)
    if interpreting() or not x.is_cuda:
        return _Tile(min(cap_c, 32), min(cap_l, 64), 1)
    if x.stride(2) == 1:
        return _Tile(min(cap_c, 8), min(cap_l, 512), 4)
    return _Tile(min(cap_c, 128), min(cap_l, 32), 4)


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    batch, channels, length = x.shape
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    tile = _tile(x)
    grid = (triton.cdiv(length, tile.block_l), triton.cdiv(channels, tile.block_c), batch)
    _short_conv_forward_kernel[grid](
        # the bias may be a strided view (a column of a parameter matrix): pass its stride
        x, weight, weight if bias is None else bias, out, *x.stride(), *weight.stride(),
        1 if bias is None else bias.stride(0), *out.stride(), channels, length,
        KERNEL_SIZE=weight.shape[1], HAS_BIAS=bias is not None,
        BLOCK_C=tile.block_c, BLOCK_L=tile.block_l, num_warps=tile.num_warps,
    )
    return out


def _backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool):
    """Returns ``(dx, dweight, dbias or None)``."""
    batch, channels, length = x.shape
    kernel_size = weight.shape[1]
    tile = _tile(x)
    n_l = triton.cdiv(length, tile.block_l)
    grid = (n_l, triton.cdiv(channels, tile.block_c), batch)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    # One row of partial sums per (batch, length tile); summed below, in a fixed order.
    dweight_part = torch.empty(batch * n_l, channels, kernel_size, device=x.device, dtype=torch.float32)
    dbias_part = torch.empty(batch * n_l, channels, device=x.device, dtype=torch.float32)
    _short_conv_backward_kernel[grid](
        grad_out, x, weight, dx, dweight_part, dbias_part,
        *grad_out.stride(), *x.stride(), *weight.stride(), *dx.stride(),
        channels, length, KERNEL_SIZE=kernel_size,
        BLOCK_C=tile.block_c, BLOCK_L=tile.block_l, num_warps=tile.num_warps,
    )
    dweight = dweight_part.sum(0).to(weight.dtype)
    dbias = dbias_part.sum(0).to(weight.dtype) if has_bias else None
    return dx, dweight, dbias


class ShortConvFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: ``apply(x, weight, bias)``, inputs checked by :func:`short_conv`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        with device_guard(x):
            out = _forward(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        with device_guard(x):
            dx, dweight, dbias = _backward(grad_out, x, weight, ctx.has_bias)
        return dx, dweight, dbias


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _short_conv_forward_kernel(
        x_ptr, w_ptr, b_ptr, out_ptr,
        stride_xb, stride_xc, stride_xl, stride_wc, stride_wk, stride_bc, stride_ob, stride_oc, stride_ol,
        channels, length,
        KERNEL_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
    ):
        pid_l, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        c_ok = c < channels
        x_rows = x_ptr + pid_b.to(tl.int64) * stride_xb + c[:, None] * stride_xc
        acc = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
        for j in tl.static_range(KERNEL_SIZE):
            src = t - (KERNEL_SIZE - 1) + j
            ok = c_ok[:, None] & ((src >= 0) & (src < length))[None, :]
            xv = tl.load(x_rows + src[None, :] * stride_xl, mask=ok, other=0.0).to(tl.float32)
            wj = tl.load(w_ptr + c * stride_wc + j * stride_wk, mask=c_ok, other=0.0).to(tl.float32)
            acc += wj[:, None] * xv
        if HAS_BIAS:
            acc += tl.load(b_ptr + c * stride_bc, mask=c_ok, other=0.0).to(tl.float32)[:, None]
        out = out_ptr + pid_b.to(tl.int64) * stride_ob + c[:, None] * stride_oc + t[None, :] * stride_ol
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=c_ok[:, None] & (t < length)[None, :])

    @triton.jit
    def _short_conv_backward_kernel(
        dy_ptr, x_ptr, w_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
        stride_gb, stride_gc, stride_gl, stride_xb, stride_xc, stride_xl, stride_wc, stride_wk,
        stride_db, stride_dc, stride_dl,
        channels, length,
        KERNEL_SIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
    ):
        pid_l, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        c_ok = c < channels
        here = c_ok[:, None] & (t < length)[None, :]
        dy_rows = dy_ptr + pid_b.to(tl.int64) * stride_gb + c[:, None] * stride_gc
        x_rows = x_ptr + pid_b.to(tl.int64) * stride_xb + c[:, None] * stride_xc
        dy_here = tl.load(dy_rows + t[None, :] * stride_gl, mask=here, other=0.0).to(tl.float32)
        # Row of the partial-sum buffers owned by this (batch, length tile).
        part = (pid_b * tl.num_programs(0) + pid_l).to(tl.int64) * channels
        dx = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
        for j in tl.static_range(KERNEL_SIZE):
            wj = tl.load(w_ptr + c * stride_wc + j * stride_wk, mask=c_ok, other=0.0).to(tl.float32)
            # x[t] fed y[t + k - 1 - j] through tap j.
            dst = t + (KERNEL_SIZE - 1) - j
            dy_later = tl.load(dy_rows + dst[None, :] * stride_gl, mask=c_ok[:, None] & (dst < length)[None, :],
                               other=0.0).to(tl.float32)
            dx += wj[:, None] * dy_later
            # Tap j read x[t - k + 1 + j] for y[t].
            src = t - (KERNEL_SIZE - 1) + j
            x_before = tl.load(x_rows + src[None, :] * stride_xl, mask=here & (src >= 0)[None, :],
                               other=0.0).to(tl.float32)
            tl.store(dw_part_ptr + (part + c) * KERNEL_SIZE + j, tl.sum(dy_here * x_before, axis=1), mask=c_ok)
        tl.store(db_part_ptr + part + c, tl.sum(dy_here, axis=1), mask=c_ok)
        dx_out = dx_ptr + pid_b.to(tl.int64) * stride_db + c[:, None] * stride_dc + t[None, :] * stride_dl
        tl.store(dx_out, dx.to(dx_ptr.dtype.element_ty), mask=here)
