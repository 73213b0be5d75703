"""Monarch matrix product ``y = x (L P^T R)^T``: fused Triton forward and backward kernels.

Dao et al., "Monarch: Expressive Structured Matrices for Efficient and Accurate
Training" (ICML 2022); Fu et al., "Monarch Mixer" (NeurIPS 2023).  An order-2
Monarch matrix is a block-diagonal ``R`` (``nblocks`` blocks ``mid/nb x in/nb``),
the stride permutation ``P^T`` and a block-diagonal ``L`` (``nblocks`` blocks
``out/nb x mid/nb``).  With ``s = mid / nblocks**2``, hidden entry
``m = rem * nblocks + k`` of first-factor block ``l`` lands in second-factor block
``k`` at slot ``r = l * s + rem``.

The forward kernel gives each program a tile of tokens and a group of
``group`` output blocks.  It forms, for every first-factor block ``l`` at once
(one batched ``tl.dot`` over ``l``), the hidden entries that its output blocks
read, permutes them in registers (``tl.reshape`` / ``tl.permute``) into
``(group, tokens, mid/nb)`` and multiplies by ``L`` (a second batched ``tl.dot``
over the group).  The permuted intermediate never goes to global memory; ``x`` is
read ``nblocks / group`` times (from L2), the first factor's work is not repeated.

The backward kernel recomputes the hidden tile the same way, forms the hidden
gradient ``dy L`` and the input gradient's share of the group, and writes the
(permuted) hidden and the (un-permuted) hidden gradient once, for a second
kernel that reduces the block-diagonal weight gradients over tokens
(``dW[b] = sum_t g[t, b]^T a[t, b]``, split over token ranges and summed in a
fixed order, no atomics).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .backend import device_guard, interpreting, select, triton_available
from .tensor_checks import check_dtype, check_like, dot_precision, dtype_names, empty_result

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPES = (*TRITON_DTYPES, torch.float64)
# Elements of the largest register tile a program holds (hidden tile, weight tiles).
_REGISTER_BUDGET = 16384
_MIN_DOT = 16  # tl.dot needs every dimension >= 16 on a GPU


def monarch_matmul_reference(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    """The PyTorch twin of :func:`monarch_matmul` (same arguments, same result): two ``torch.bmm``
    with the block index as batch (which ``FlopCounterMode`` counts exactly) and the stride
    permutation as a view."""
    lead = x.shape[:-1]
    nb, mid_block, in_block = blkdiag1.shape
    out_features = nb * blkdiag2.shape[1]
    x = x.reshape(-1, x.shape[-1])
    tokens = x.shape[0]
    blocks = x.reshape(tokens, nb, in_block).transpose(0, 1)  # (nb, tokens, in/nb)
    hidden = torch.bmm(blocks, blkdiag1.transpose(1, 2))  # (nb, tokens, mid/nb)
    hidden = hidden.transpose(0, 1).reshape(tokens, nb * mid_block)
    # Stride permutation: hidden entry j = r * nb + l feeds block l at slot r.
    hidden = hidden.reshape(tokens, mid_block, nb).permute(2, 0, 1)  # (nb, tokens, mid/nb)
    out = torch.bmm(hidden, blkdiag2.transpose(1, 2))  # (nb, tokens, out/nb)
    return out.transpose(0, 1).reshape(*lead, out_features)


def offtheshelf_monarch_matmul(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    """The off-the-shelf baseline for benchmarks: ``torch.bmm`` with explicit (materialised) permutes,
    as in the Monarch authors' ``blockdiag_butterfly_multiply`` reference.  Same arguments as
    :func:`monarch_matmul`."""
    lead = x.shape[:-1]
    nb, mid_block, in_block = blkdiag1.shape
    x = x.reshape(-1, nb, in_block).permute(1, 0, 2).contiguous()  # (nb, tokens, in/nb)
    hidden = torch.bmm(x, blkdiag1.transpose(1, 2))  # (nb, tokens, mid/nb), block l
    tokens = hidden.shape[1]
    # (l, t, rem, k) -> (k, t, l, rem): the stride permutation, written out.
    hidden = hidden.reshape(nb, tokens, mid_block // nb, nb).permute(3, 1, 0, 2).reshape(nb, tokens, mid_block)
    out = torch.bmm(hidden.contiguous(), blkdiag2.transpose(1, 2))  # (nb, tokens, out/nb)
    return out.permute(1, 0, 2).reshape(*lead, nb * blkdiag2.shape[1])


def monarch_matmul(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    """Order-2 Monarch product ``y = x M^T`` with ``M = L P^T R`` (no bias).

    Args:
        x: ``(..., in_features)``; float16, bfloat16, float32 or float64.
        blkdiag1: ``R``, ``(nblocks, mid_features / nblocks, in_features / nblocks)``; ``mid / nblocks``
            must be a multiple of ``nblocks`` (see ``seqarch.modules.monarch.monarch_mid_features``).
        blkdiag2: ``L``, ``(nblocks, out_features / nblocks, mid_features / nblocks)``.
        All three share dtype and device.

    Returns:
        ``(..., out_features)`` in ``x``'s dtype:
        ``y[t, k*ob + o] = sum_{l, rem} L[k, o, l*s + rem] * sum_i R[l, rem*nb + k, i] x[t, l*ib + i]``
        with ``s = mid / nblocks**2``, ``ib = in / nblocks``, ``ob = out / nblocks``.

    Backends (:mod:`seqarch.kernels.backend`): the Triton kernels run float16, bfloat16 and
    float32 (float32 accumulation; fp32 dots in IEEE precision, not tf32), see
    :func:`triton_limits`; float64 runs the PyTorch twin (:func:`monarch_matmul_reference`)
    under ``auto`` and raises ``ValueError`` under forced ``triton``.  No tokens: an empty
    result.  A program holds a hidden tile of ``16 * mid / nblocks`` float32 numbers or more;
    past 16k (``nblocks = 2`` at width 4096) it spills registers: slower, still correct.
    """
    _check_inputs(x, blkdiag1, blkdiag2)
    lead = x.shape[:-1]
    out_features = blkdiag2.shape[0] * blkdiag2.shape[1]
    if x.numel() == 0:
        return empty_result((*lead, out_features), x, x, blkdiag1, blkdiag2)
    if select("monarch_matmul", x, triton_limits(x, blkdiag1, blkdiag2)) == "triton":
        y = MonarchMatmulFunction.apply(x.reshape(-1, x.shape[-1]), blkdiag1, blkdiag2)
        return y.reshape(*lead, out_features)
    return monarch_matmul_reference(x, blkdiag1, blkdiag2)


def triton_limits(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> str | None:
    """Why the Triton path cannot take ``monarch_matmul(x, blkdiag1, blkdiag2)``, or None when it can."""
    if x.dtype not in TRITON_DTYPES:
        return f"x: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {x.dtype}"
    return None


def _check_inputs(x, blkdiag1, blkdiag2) -> None:
    """Raise a ValueError naming the first bad argument."""
    for name, tensor, rank in (("blkdiag1", blkdiag1, 3), ("blkdiag2", blkdiag2, 3)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != rank or 0 in tensor.shape:
            got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{name}: expected a non-empty rank-3 tensor (nblocks, rows, cols), got {got}")
    nb, mid_block, in_block = blkdiag1.shape
    if mid_block % nb:
        raise ValueError(
            f"blkdiag1: expected mid_features / nblocks (dim 1) a multiple of nblocks={nb}, "
            f"got shape {tuple(blkdiag1.shape)}"
        )
    if blkdiag2.shape[0] != nb or blkdiag2.shape[2] != mid_block:
        expected = f"({nb}, out_features / {nb}, {mid_block})"
        raise ValueError(f"blkdiag2: expected shape {expected}, got {tuple(blkdiag2.shape)}")
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != nb * in_block:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected shape (..., in_features={nb * in_block}), got {got}")
    check_dtype("x", x, DTYPES)
    check_like("x", x, {"blkdiag1": blkdiag1, "blkdiag2": blkdiag2})


class _Tiles(NamedTuple):
    """Tile sizes of the fused kernels (all powers of two)."""

    block_t: int  # tokens per program
    nb_pad: int  # nblocks, padded
    s_pad: int  # s = mid / nblocks**2, padded
    group: int  # output blocks per program
    block_i: int  # input columns per step of the first product
    block_o: int  # output columns per step of the second product
    num_warps: int


def _tiles(nb: int, in_block: int, mid_block: int, out_block: int, device: torch.device) -> _Tiles:
    """Heuristic tiles: the widest output-block group whose hidden tile
    ``(nb, tokens, s * group)`` fits the register budget, then weight tiles of the same size."""
    p2 = triton.next_power_of_2
    block_t = _MIN_DOT
    nb_pad, s_pad = p2(nb), p2(mid_block // nb)
    group = 1
    while group * 2 <= nb_pad and nb_pad * s_pad * group * 2 * block_t <= _REGISTER_BUDGET:
        group *= 2
    s_pad = max(s_pad, _MIN_DOT // group)  # the first product's N = s_pad * group >= 16
    cols = s_pad * group
    block_i = max(_MIN_DOT, min(p2(in_block), _REGISTER_BUDGET // (nb_pad * cols)))
    block_o = max(_MIN_DOT, min(p2(out_block), _REGISTER_BUDGET // (group * nb_pad * s_pad)))
    # 8 warps on a GPU: the hidden tile alone is up to 16k fp32 numbers, 64 registers a thread.
    num_warps = 1 if interpreting() or device.type != "cuda" else 8
    return _Tiles(block_t, nb_pad, s_pad, group, block_i, block_o, num_warps)


def _forward(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    """``x: (tokens, in)`` -> ``(tokens, out)``."""
    tokens = x.shape[0]
    nb, mid_block, in_block = blkdiag1.shape
    out_block = blkdiag2.shape[1]
    tiles = _tiles(nb, in_block, mid_block, out_block, x.device)
    y = torch.empty(tokens, nb * out_block, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(tokens, tiles.block_t), triton.cdiv(nb, tiles.group))
    _monarch_forward_kernel[grid](
        x, blkdiag1, blkdiag2, y, *x.stride(), *blkdiag1.stride(), *blkdiag2.stride(), *y.stride(),
        tokens, nb, in_block, mid_block, out_block,
        NB_P=tiles.nb_pad, S_P=tiles.s_pad, GROUP=tiles.group, BLOCK_T=tiles.block_t,
        BLOCK_I=tiles.block_i, BLOCK_O=tiles.block_o, PRECISION=dot_precision(x.dtype), num_warps=tiles.num_warps,
    )
    return y


def _blockdiag_weight_grad(grads: torch.Tensor, acts: torch.Tensor, nb: int, like: torch.Tensor,
                           target_programs: int | None = None) -> torch.Tensor:
    """``dW[b] = grads[:, b]^T acts[:, b]`` for ``grads: (tokens, nb * rows)``, ``acts: (tokens, nb * cols)``,
    as ``like``'s dtype, shape ``(nb, rows, cols)``.  The token sum is split into ranges until there
    are about ``target_programs`` programs (default: enough to fill a GPU; one range in the interpreter)."""
    tokens = grads.shape[0]
    rows, cols = grads.shape[1] // nb, acts.shape[1] // nb
    p2 = triton.next_power_of_2
    block_m, block_n = max(_MIN_DOT, min(p2(rows), 64)), max(_MIN_DOT, min(p2(cols), 64))
    on_gpu = grads.is_cuda and not interpreting()
    block_t = 32 if on_gpu else _MIN_DOT
    tiles_mn = triton.cdiv(rows, block_m) * triton.cdiv(cols, block_n) * nb
    if target_programs is None:
        target_programs = 512 if on_gpu else 1
    splits = max(1, min(triton.cdiv(tokens, 8 * block_t), triton.cdiv(target_programs, tiles_mn)))
    tokens_per_split = triton.cdiv(triton.cdiv(tokens, splits), block_t) * block_t
    splits = triton.cdiv(tokens, tokens_per_split)
    partial = torch.empty(splits, nb, rows, cols, device=grads.device, dtype=torch.float32)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(cols, block_n), nb * splits)
    _blockdiag_weight_grad_kernel[grid](
        grads, acts, partial, *grads.stride(), *acts.stride(), tokens, nb, rows, cols, tokens_per_split,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_T=block_t, PRECISION=dot_precision(grads.dtype),
        num_warps=4 if on_gpu else 1,
    )
    return partial.sum(0).to(like.dtype)


def _backward(grad_out, x, blkdiag1, blkdiag2):
    """Returns ``(dx, dblkdiag1, dblkdiag2)`` for ``x: (tokens, in)``."""
    tokens = x.shape[0]
    nb, mid_block, in_block = blkdiag1.shape
    out_block = blkdiag2.shape[1]
    tiles = _tiles(nb, in_block, mid_block, out_block, x.device)
    groups = triton.cdiv(nb, tiles.group)
    # hidden in second-factor order (tokens, k, r); its gradient in first-factor order (tokens, l, m).
    hidden = torch.empty(tokens, nb * mid_block, device=x.device, dtype=x.dtype)
    grad_hidden = torch.empty_like(hidden)
    # Each output-block group adds its share to dx; with several groups, sum fp32 shares in a fixed order.
    dx_part = torch.empty(groups, tokens, nb * in_block, device=x.device,
                          dtype=x.dtype if groups == 1 else torch.float32)
    grid = (triton.cdiv(tokens, tiles.block_t), groups)
    _monarch_backward_kernel[grid](
        x, blkdiag1, blkdiag2, grad_out, hidden, grad_hidden, dx_part,
        *x.stride(), *blkdiag1.stride(), *blkdiag2.stride(), *grad_out.stride(),
        tokens, nb, in_block, mid_block, out_block,
        NB_P=tiles.nb_pad, S_P=tiles.s_pad, GROUP=tiles.group, BLOCK_T=tiles.block_t,
        BLOCK_I=tiles.block_i, BLOCK_O=tiles.block_o, PRECISION=dot_precision(x.dtype), num_warps=tiles.num_warps,
    )
    dx = dx_part[0] if groups == 1 else dx_part.sum(0).to(x.dtype)
    dblkdiag2 = _blockdiag_weight_grad(grad_out, hidden, nb, blkdiag2)
    dblkdiag1 = _blockdiag_weight_grad(grad_hidden, x, nb, blkdiag1)
    return dx, dblkdiag1, dblkdiag2


class MonarchMatmulFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: ``apply(x, blkdiag1, blkdiag2)`` with ``x: (tokens, in)``,
    inputs checked by :func:`monarch_matmul`."""

    @staticmethod
    def forward(ctx, x, blkdiag1, blkdiag2):
        with device_guard(x):
            y = _forward(x, blkdiag1, blkdiag2)
        ctx.save_for_backward(x, blkdiag1, blkdiag2)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, blkdiag1, blkdiag2 = ctx.saved_tensors
        with device_guard(x):
            return _backward(grad_out, x, blkdiag1, blkdiag2)


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _first_factor_rows(k0, nblocks, s, S_P: tl.constexpr, GROUP: tl.constexpr):
        """Rows ``m = rem * nblocks + k0 + g`` of a first-factor block that output blocks ``k0 .. k0 + GROUP``
        read, for column ``rem * GROUP + g`` of a hidden tile, and whether each is real (not padding)."""
        col = tl.arange(0, S_P * GROUP)
        rem, g = col // GROUP, col % GROUP
        return rem * nblocks + k0 + g, (rem < s) & (k0 + g < nblocks)

    @triton.jit
    def _second_factor_slots(nblocks, s, NB_P: tl.constexpr, S_P: tl.constexpr):
        """Slots ``r = l * s + rem`` of a second-factor block for index ``l * S_P + rem``, and which are real."""
        q = tl.arange(0, NB_P * S_P)
        return (q // S_P) * s + q % S_P, (q // S_P < nblocks) & (q % S_P < s)

    @triton.jit
    def _hidden_for_group(
        x_ptr, w1_ptr, stride_xt, stride_xf, stride_1b, stride_1m, stride_1i,
        t, k0, tokens, nblocks, in_block, s,
        NB_P: tl.constexpr, S_P: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """``(NB_P, BLOCK_T, S_P * GROUP)`` fp32: entry ``[l, t, rem * GROUP + g]`` is hidden entry
        ``m = rem * nblocks + k0 + g`` of first-factor block ``l`` (zero where padded)."""
        l = tl.arange(0, NB_P)
        m, col_ok = _first_factor_rows(k0, nblocks, s, S_P, GROUP)
        l_ok = l < nblocks
        x_rows = x_ptr + t[None, :, None].to(tl.int64) * stride_xt
        row_ok = l_ok[:, None, None] & (t < tokens)[None, :, None]
        acc = tl.zeros((NB_P, BLOCK_T, S_P * GROUP), dtype=tl.float32)
        for i0 in range(0, in_block, BLOCK_I):
            i = i0 + tl.arange(0, BLOCK_I)
            i_ok = i < in_block
            xv = tl.load(x_rows + (l[:, None, None] * in_block + i[None, None, :]) * stride_xf,
                         mask=row_ok & i_ok[None, None, :], other=0.0)
            wv = tl.load(w1_ptr + l[:, None, None] * stride_1b + i[None, :, None] * stride_1i
                         + m[None, None, :] * stride_1m,
                         mask=l_ok[:, None, None] & i_ok[None, :, None] & col_ok[None, None, :], other=0.0)
            acc = tl.dot(xv, wv, acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _to_second_factor_order(h, NB_P: tl.constexpr, S_P: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr):
        """The stride permutation in registers: ``(l, t, rem * GROUP + g)`` -> ``(g, t, l * S_P + rem)``."""
        h = tl.permute(tl.reshape(h, (NB_P, BLOCK_T, S_P, GROUP)), (3, 1, 0, 2))
        return tl.reshape(h, (GROUP, BLOCK_T, NB_P * S_P))

    @triton.jit
    def _to_first_factor_order(h, NB_P: tl.constexpr, S_P: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr):
        """Inverse of :func:`_to_second_factor_order`."""
        h = tl.permute(tl.reshape(h, (GROUP, BLOCK_T, NB_P, S_P)), (2, 1, 3, 0))
        return tl.reshape(h, (NB_P, BLOCK_T, S_P * GROUP))

    @triton.jit
    def _monarch_forward_kernel(
        x_ptr, w1_ptr, w2_ptr, y_ptr,
        stride_xt, stride_xf, stride_1b, stride_1m, stride_1i, stride_2b, stride_2o, stride_2r, stride_yt, stride_yf,
        tokens, nblocks, in_block, mid_block, out_block,
        NB_P: tl.constexpr, S_P: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr,
    ):
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        k0 = tl.program_id(1) * GROUP
        s = mid_block // nblocks
        hidden = _hidden_for_group(x_ptr, w1_ptr, stride_xt, stride_xf, stride_1b, stride_1m, stride_1i,
                                   t, k0, tokens, nblocks, in_block, s, NB_P, S_P, GROUP, BLOCK_T, BLOCK_I, PRECISION)
        hidden = _to_second_factor_order(hidden, NB_P, S_P, GROUP, BLOCK_T).to(x_ptr.dtype.element_ty)
        r, q_ok = _second_factor_slots(nblocks, s, NB_P, S_P)
        k = k0 + tl.arange(0, GROUP)
        k_ok = k < nblocks
        y_rows = y_ptr + t[None, :, None].to(tl.int64) * stride_yt
        for o0 in range(0, out_block, BLOCK_O):
            o = o0 + tl.arange(0, BLOCK_O)
            o_ok = o < out_block
            wv = tl.load(w2_ptr + k[:, None, None] * stride_2b + r[None, :, None] * stride_2r
                         + o[None, None, :] * stride_2o,
                         mask=k_ok[:, None, None] & q_ok[None, :, None] & o_ok[None, None, :], other=0.0)
            y = tl.dot(hidden, wv, input_precision=PRECISION)  # (GROUP, BLOCK_T, BLOCK_O)
            tl.store(y_rows + (k[:, None, None] * out_block + o[None, None, :]) * stride_yf,
                     y.to(y_ptr.dtype.element_ty),
                     mask=k_ok[:, None, None] & (t < tokens)[None, :, None] & o_ok[None, None, :])

    @triton.jit
    def _monarch_backward_kernel(
        x_ptr, w1_ptr, w2_ptr, dy_ptr, hid_ptr, dhid_ptr, dx_ptr,
        stride_xt, stride_xf, stride_1b, stride_1m, stride_1i, stride_2b, stride_2o, stride_2r,
        stride_gt, stride_gf,
        tokens, nblocks, in_block, mid_block, out_block,
        NB_P: tl.constexpr, S_P: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr,
    ):
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = t < tokens
        k0 = tl.program_id(1) * GROUP
        s = mid_block // nblocks
        width = nblocks * mid_block
        r, q_ok = _second_factor_slots(nblocks, s, NB_P, S_P)
        k = k0 + tl.arange(0, GROUP)
        k_ok = k < nblocks
        kt_ok = k_ok[:, None, None] & t_ok[None, :, None]

        # Recompute this group's hidden (permuted) and keep it for dW2 = dy^T hidden.
        hidden = _hidden_for_group(x_ptr, w1_ptr, stride_xt, stride_xf, stride_1b, stride_1m, stride_1i,
                                   t, k0, tokens, nblocks, in_block, s, NB_P, S_P, GROUP, BLOCK_T, BLOCK_I, PRECISION)
        hidden = _to_second_factor_order(hidden, NB_P, S_P, GROUP, BLOCK_T)
        t_rows = t[None, :, None].to(tl.int64) * width
        tl.store(hid_ptr + t_rows + k[:, None, None] * mid_block + r[None, None, :],
                 hidden.to(hid_ptr.dtype.element_ty), mask=kt_ok & q_ok[None, None, :])

        # dhidden = dy L, in second-factor order.
        dy_rows = dy_ptr + t[None, :, None].to(tl.int64) * stride_gt
        dhidden = tl.zeros((GROUP, BLOCK_T, NB_P * S_P), dtype=tl.float32)
        for o0 in range(0, out_block, BLOCK_O):
            o = o0 + tl.arange(0, BLOCK_O)
            o_ok = o < out_block
            dy = tl.load(dy_rows + (k[:, None, None] * out_block + o[None, None, :]) * stride_gf,
                         mask=kt_ok & o_ok[None, None, :], other=0.0)
            wv = tl.load(w2_ptr + k[:, None, None] * stride_2b + o[None, :, None] * stride_2o
                         + r[None, None, :] * stride_2r,
                         mask=k_ok[:, None, None] & o_ok[None, :, None] & q_ok[None, None, :], other=0.0)
            dhidden = tl.dot(dy, wv, dhidden, input_precision=PRECISION)

        # Back to first-factor order: entry [l, t, rem * GROUP + g] is hidden index m = rem * nb + k0 + g of block l.
        dhidden = _to_first_factor_order(dhidden, NB_P, S_P, GROUP, BLOCK_T).to(dhid_ptr.dtype.element_ty)
        l = tl.arange(0, NB_P)
        l_ok = l < nblocks
        m, col_ok = _first_factor_rows(k0, nblocks, s, S_P, GROUP)
        lt_ok = l_ok[:, None, None] & t_ok[None, :, None]
        tl.store(dhid_ptr + t_rows + l[:, None, None] * mid_block + m[None, None, :], dhidden,
                 mask=lt_ok & col_ok[None, None, :])

        # This group's share of dx = dhidden R.
        dx_rows = dx_ptr + (tl.program_id(1).to(tl.int64) * tokens + t[None, :, None]) * (nblocks * in_block)
        for i0 in range(0, in_block, BLOCK_I):
            i = i0 + tl.arange(0, BLOCK_I)
            i_ok = i < in_block
            wv = tl.load(w1_ptr + l[:, None, None] * stride_1b + m[None, :, None] * stride_1m
                         + i[None, None, :] * stride_1i,
                         mask=l_ok[:, None, None] & col_ok[None, :, None] & i_ok[None, None, :], other=0.0)
            dx = tl.dot(dhidden, wv, input_precision=PRECISION)  # (NB_P, BLOCK_T, BLOCK_I)
            tl.store(dx_rows + l[:, None, None] * in_block + i[None, None, :], dx.to(dx_ptr.dtype.element_ty),
                     mask=lt_ok & i_ok[None, None, :])

    @triton.jit
    def _blockdiag_weight_grad_kernel(
        g_ptr, a_ptr, out_ptr, stride_gt, stride_gf, stride_at, stride_af,
        tokens, nblocks, rows, cols, tokens_per_split,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """``out[split, b, m, n] = sum_{t in split} g[t, b * rows + m] * a[t, b * cols + n]``."""
        m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        b = tl.program_id(2) % nblocks
        split = tl.program_id(2) // nblocks
        m_ok, n_ok = m < rows, n < cols
        start = split * tokens_per_split
        stop = tl.minimum(start + tokens_per_split, tokens)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for t0 in range(start, stop, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            t_ok = t < stop
            gv = tl.load(g_ptr + t[None, :].to(tl.int64) * stride_gt + (b * rows + m[:, None]) * stride_gf,
                         mask=m_ok[:, None] & t_ok[None, :], other=0.0)
            av = tl.load(a_ptr + t[:, None].to(tl.int64) * stride_at + (b * cols + n[None, :]) * stride_af,
                         mask=t_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(gv, av, acc, input_precision=PRECISION)
        out = out_ptr + ((split * nblocks + b).to(tl.int64) * rows + m[:, None]) * cols + n[None, :]
        tl.store(out, acc, mask=m_ok[:, None] & n_ok[None, :])
