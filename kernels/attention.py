"""Fused softmax attention: FlashAttention-2 forward and backward Triton kernels.

Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning", 2023 (after Dao et al., "FlashAttention", 2022).  The forward
walks over key/value blocks with an online softmax and keeps one log-sum-exp per
query row; the backward recomputes the probabilities from it, after a small
kernel that forms ``delta = rowsum(dO * O)``.  Keys and values get their
gradients in one kernel (one program per key block, looping over query blocks
and, for grouped-query heads, over the query heads of the group, so no atomics
are needed); queries get theirs in another.  No ``length_q x length_kv`` matrix
is ever written to memory.

Scores are kept in base-2 units (``scale * log2(e)`` folded into one multiply)
so the kernels use ``exp2``; the saved log-sum-exp is in those units too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .backend import device_guard, interpreting, select, triton_available
from .tensor_checks import check_dtype, check_like, dot_precision, dtype_names, empty_result

TRITON_HEAD_DIMS = (16, 32, 64, 128)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPES = (*TRITON_DTYPES, torch.float64)
LOG2_E = 1.4426950408889634


def causal_mask(length_q: int, length_kv: int, device=None) -> torch.Tensor:
    """``(length_q, length_kv)`` bool, True where query ``i`` may see key ``j``: ``j <= i + length_kv - length_q``.

    Bottom-right alignment: the last query sits at the last key, as when the
    queries are the newest ``length_q`` tokens of a ``length_kv``-token sequence.
    """
    return torch.ones(length_q, length_kv, dtype=torch.bool, device=device).tril(length_kv - length_q)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                        scale: float | None = None) -> torch.Tensor:
    """The PyTorch twin of :func:`attention` (same arguments, same result), through SDPA."""
    length_q, length_kv = q.shape[2], k.shape[2]
    # SDPA's is_causal aligns top-left; an explicit mask gives our bottom-right convention.
    mask = causal_mask(length_q, length_kv, q.device) if causal and length_q != length_kv else None
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def offtheshelf_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                          scale: float | None = None) -> torch.Tensor:
    """The off-the-shelf baseline for benchmarks: SDPA restricted to its FlashAttention backend.

    Same layout as :func:`attention`; causal attention needs ``length_q == length_kv``
    here (SDPA's flash backend aligns top-left).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"k: expected length_kv == length_q={q.shape[2]} for causal attention, got {k.shape[2]}")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              scale: float | None = None, validate: bool = True) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T * scale + mask) v``, fused (FlashAttention-2) on the Triton path.

    Args:
        q: queries ``(batch, n_heads, length_q, head_dim)``.
        k: keys ``(batch, n_kv_heads, length_kv, head_dim)``; ``n_kv_heads`` divides
            ``n_heads`` (grouped-query heads: query head ``h`` reads key/value head
            ``h // (n_heads // n_kv_heads)``).
        v: values, shaped like ``k``.
        causal: query ``i`` sees key ``j`` only when ``j <= i + length_kv - length_q``
            (bottom-right alignment, as in FlashAttention-2; the same as SDPA's
            ``is_causal`` when the lengths are equal); needs ``length_q <= length_kv``.
        scale: multiplies the scores; default ``1 / sqrt(head_dim)``.

    Returns:
        ``(batch, n_heads, length_q, head_dim)`` in the dtype of ``q``.

    Dtypes float16, bfloat16, float32 (and float64, on the twin only); q, k, v share
    dtype and device.  Any lengths (block tails are masked).  ``batch = 0`` or
    ``n_heads = 0`` gives an empty result; ``n_kv_heads`` must be positive.

    ``validate=False`` skips the argument checks, for a caller whose tensors are made to this
    contract (the attention layer's projections; a decoding step calls once per layer per token,
    where the checks cost a few percent of the step).

    Backends (:mod:`seqarch.kernels.backend`): the Triton path takes head dims 16, 32, 64,
    128 in float16/bfloat16/float32 (:func:`triton_limits`); other calls run the PyTorch
    twin (:func:`attention_reference`, SDPA) under ``auto`` and raise ``ValueError`` under
    forced ``triton``.
    """
    if validate:
        _check_inputs(q, k, v, causal, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.numel() == 0:
        return empty_result(q.shape, q, q, k, v)
    if select("attention", q, triton_limits(q, k, v, causal=causal, scale=scale)) == "triton":
        return AttentionFunction.apply(q, k, v, causal, scale)
    return attention_reference(q, k, v, causal=causal, scale=scale)


def triton_limits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  scale: float | None = None) -> str | None:
    """Why the Triton path cannot take ``attention(q, k, v, ...)``, or None when it can."""
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        dims = ", ".join(map(str, TRITON_HEAD_DIMS))
        return f"q: expected head_dim in ({dims}) for the Triton path, got {q.shape[-1]}"
    if q.dtype not in TRITON_DTYPES:
        return f"q: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {q.dtype}"
    return None


def _check_inputs(q, k, v, causal, scale) -> None:
    """Raise a ValueError naming the first bad argument."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{name}: expected rank 4 (batch, heads, length, head_dim), got {got}")
        check_dtype(name, tensor, DTYPES)
        check_like("q", q, {name: tensor})
        if tensor.shape[2] == 0 or tensor.shape[3] == 0:
            raise ValueError(f"{name}: expected a positive length and head_dim, got shape {tuple(tensor.shape)}")
    batch, n_heads, length_q, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k: expected shape ({batch}, n_kv_heads, length_kv, {head_dim}), got {tuple(k.shape)}")
    if k.shape[1] == 0 or n_heads % k.shape[1]:
        raise ValueError(f"k: expected n_kv_heads >= 1 dividing n_heads={n_heads}, got {k.shape[1]}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected shape {tuple(k.shape)} (that of k), got {tuple(v.shape)}")
    if type(causal) is not bool:  # 0 and 1 would pass isinstance(bool) checks of other kinds
        raise ValueError(f"causal: expected a bool, got {causal!r}")
    if causal and length_q > k.shape[2]:
        raise ValueError(f"q: expected length_q <= length_kv={k.shape[2]} for causal attention, got {length_q}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale: expected a finite float, got {scale!r}")


class _Launch(NamedTuple):
    """Tile sizes and launch options of one kernel."""

    block_m: int  # query rows per tile
    block_n: int  # key rows per tile
    num_warps: int
    num_stages: int


def _launch_configs(head_dim: int, dtype: torch.dtype, device: torch.device) -> tuple[_Launch, _Launch, _Launch]:
    """Tiles for (forward, dK/dV, dQ).  Small fixed tiles in the interpreter (each
    program is slow there, the tests use tiny lengths); on a GPU, FlashAttention-2's
    choices: a tall query tile for the forward and dQ, a tall key tile for dK/dV,
    narrower for head dim 128 to keep the fp32 accumulators in registers, and
    smaller still for float32 inputs, whose tiles take twice the shared memory."""
    if interpreting() or device.type != "cuda":
        tile = _Launch(16, 16, 1, 1)
        return tile, tile, tile
    wide = head_dim > 64
    warps = 8 if wide else 4
    if dtype == torch.float32:
        return (_Launch(64, 32, warps, 2), _Launch(16 if wide else 32, 64, warps, 2),
                _Launch(32 if wide else 64, 32, warps, 2))
    return (_Launch(128, 64, warps, 3), _Launch(32, 64 if wide else 128, warps, 3),
            _Launch(64 if wide else 128, 32, warps, 3))


def _strides(tensor: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(tensor.stride())


def _forward(q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel; returns the output and the base-2 log-sum-exp ``(batch, n_heads, length_q)``."""
    batch, n_heads, length_q, head_dim = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(batch, n_heads, length_q, device=q.device, dtype=torch.float32)
    tile = _launch_configs(head_dim, q.dtype, q.device)[0]
    grid = (triton.cdiv(length_q, tile.block_m), n_heads, batch)
    _attention_forward_kernel[grid](
        q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        n_heads // k.shape[1], length_q, k.shape[2], scale * LOG2_E,
        CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
        PRECISION=dot_precision(q.dtype), num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return out, lse


def _backward(grad_out, q, k, v, out, lse, causal: bool, scale: float):
    """Launch the three backward kernels; returns ``(dq, dk, dv)``."""
    batch, n_heads, length_q, head_dim = q.shape
    n_kv_heads, length_kv = k.shape[1], k.shape[2]
    _, dkdv_tile, dq_tile = _launch_configs(head_dim, q.dtype, q.device)
    delta = torch.empty_like(lse)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    precision = dot_precision(q.dtype)
    rows_per_program = 64
    _attention_delta_kernel[(triton.cdiv(length_q, rows_per_program), n_heads, batch)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), length_q,
        HEAD_DIM=head_dim, BLOCK_M=rows_per_program,
    )
    _attention_backward_dkdv_kernel[(triton.cdiv(length_kv, dkdv_tile.block_n), n_kv_heads, batch)](
        q, k, v, grad_out, lse, delta, dk, dv,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dk), *_strides(dv),
        n_heads, n_heads // n_kv_heads, length_q, length_kv, scale * LOG2_E, scale,
        CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_M=dkdv_tile.block_m, BLOCK_N=dkdv_tile.block_n,
        PRECISION=precision, num_warps=dkdv_tile.num_warps, num_stages=dkdv_tile.num_stages,
    )
    _attention_backward_dq_kernel[(triton.cdiv(length_q, dq_tile.block_m), n_heads, batch)](
        q, k, v, grad_out, lse, delta, dq,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dq),
        n_heads // n_kv_heads, length_q, length_kv, scale * LOG2_E, scale,
        CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_M=dq_tile.block_m, BLOCK_N=dq_tile.block_n,
        PRECISION=precision, num_warps=dq_tile.num_warps, num_stages=dq_tile.num_stages,
    )
    return dq, dk, dv


class AttentionFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: ``apply(q, k, v, causal, scale)``; :func:`attention` checks inputs."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float):
        with device_guard(q):
            out, lse = _forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        with device_guard(q):
            dq, dk, dv = _backward(grad_out, q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None



if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _allowed(rows, cols, length_q, length_kv, CAUSAL: tl.constexpr):
        """Which (query row, key column) pairs enter the softmax; ``rows``, ``cols`` broadcast to a tile."""
        allowed = cols < length_kv
        if CAUSAL:
            allowed = allowed & (cols <= rows + (length_kv - length_q))
        return allowed

    @triton.jit
    def _key_block_bounds(start_m, length_q, length_kv, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
        """For the query rows ``[start_m, start_m + BLOCK_M)``: key blocks below ``unmasked`` are
        fully visible and in bounds (no mask); those in ``[unmasked, end)`` need the mask."""
        if CAUSAL:
            end = tl.minimum(start_m + BLOCK_M + (length_kv - length_q), length_kv)
            unmasked = tl.minimum(start_m + 1 + (length_kv - length_q), length_kv) // BLOCK_N * BLOCK_N
        else:
            end = length_kv
            unmasked = length_kv // BLOCK_N * BLOCK_N
        return unmasked, end

    @triton.jit
    def _query_block_bounds(start_n, length_q, length_kv, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr):
        """For the key rows ``[start_n, start_n + BLOCK_N)``: the query blocks in ``[first, unmasked)``
        need the causal mask, those in ``[unmasked, length_q)`` see the whole key block."""
        if CAUSAL:
            shift = length_kv - length_q
            first = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
            unmasked = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M
            unmasked = tl.minimum(unmasked, length_q)
        else:
            first = 0
            unmasked = 0
        return first, unmasked

    @triton.jit
    def _key_block_scores(q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, rows, cols, dims,
                          length_q, length_kv, qk_scale, VALUES_T: tl.constexpr, MASKED: tl.constexpr,
                          CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
        """For the key block ``cols`` (shared by the forward and the dQ loops): ``K^T`` ``(HEAD_DIM, BLOCK_N)``,
        ``V`` ``(BLOCK_N, HEAD_DIM)`` (``V^T`` when ``VALUES_T``) and the scores ``q K^T * qk_scale``
        ``(BLOCK_M, BLOCK_N)`` with ``-inf`` where masked (only ``MASKED`` blocks pay for the mask)."""
        k_ptrs = k_base + cols[None, :] * stride_kn + dims[:, None] * stride_kd
        if VALUES_T:
            v_ptrs = v_base + cols[None, :] * stride_vn + dims[:, None] * stride_vd
            v_ok = cols[None, :] < length_kv
        else:
            v_ptrs = v_base + cols[:, None] * stride_vn + dims[None, :] * stride_vd
            v_ok = cols[:, None] < length_kv
        if MASKED:
            keys_t = tl.load(k_ptrs, mask=cols[None, :] < length_kv, other=0.0)
            values = tl.load(v_ptrs, mask=v_ok, other=0.0)
        else:
            keys_t = tl.load(k_ptrs)
            values = tl.load(v_ptrs)
        scores = tl.dot(q, keys_t, input_precision=PRECISION) * qk_scale
        if MASKED:
            allowed = _allowed(rows[:, None], cols[None, :], length_q, length_kv, CAUSAL)
            scores = tl.where(allowed, scores, float("-inf"))
        return keys_t, values, scores

    @triton.jit
    def _forward_key_blocks(acc, row_sum, row_max, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                            rows, start, stop, length_q, length_kv, qk_scale, MASKED: tl.constexpr,
                            CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                            PRECISION: tl.constexpr):
        """Online softmax over the key blocks in ``[start, stop)``."""
        dims = tl.arange(0, HEAD_DIM)
        for start_n in range(start, stop, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            _keys_t, values, scores = _key_block_scores(
                q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, rows, cols, dims, length_q,
                length_kv, qk_scale, False, MASKED, CAUSAL, PRECISION)
            new_max = tl.maximum(row_max, tl.max(scores, 1))
            probs = tl.exp2(scores - new_max[:, None])
            correction = tl.exp2(row_max - new_max)
            row_sum = row_sum * correction + tl.sum(probs, 1)
            acc = tl.dot(probs.to(values.dtype), values, acc * correction[:, None], input_precision=PRECISION)
            row_max = new_max
        return acc, row_sum, row_max

    @triton.jit
    def _attention_forward_kernel(Q, K, V, O, LSE,
                                  stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn,
                                  stride_kd, stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh,
                                  stride_om, stride_od, group_size, length_q, length_kv, qk_scale,
                                  CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        """One program per (query block, head, batch): ``O`` and the base-2 log-sum-exp ``LSE``."""
        start_m = tl.program_id(0) * BLOCK_M
        head = tl.program_id(1)
        batch = tl.program_id(2).to(tl.int64)
        kv_head = head // group_size
        rows = start_m + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        row_ok = rows < length_q
        q_ptrs = Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qm + dims[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
        k_base = K + batch * stride_kb + kv_head * stride_kh
        v_base = V + batch * stride_vb + kv_head * stride_vh
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        unmasked, end = _key_block_bounds(start_m, length_q, length_kv, CAUSAL, BLOCK_M, BLOCK_N)
        # Blocks wholly visible first, without the mask; the diagonal and tail blocks after.
        # Every row sees key 0 (length_q <= length_kv when causal), so row_max is finite after block 0.
        acc, row_sum, row_max = _forward_key_blocks(
            acc, row_sum, row_max, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, rows, 0, unmasked,
            length_q, length_kv, qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_N, PRECISION)
        acc, row_sum, row_max = _forward_key_blocks(
            acc, row_sum, row_max, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, rows, unmasked,
            end, length_q, length_kv, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_N, PRECISION)
        o_ptrs = O + batch * stride_ob + head * stride_oh + rows[:, None] * stride_om + dims[None, :] * stride_od
        tl.store(o_ptrs, (acc / row_sum[:, None]).to(O.dtype.element_ty), mask=row_ok[:, None])
        lse_ptrs = LSE + (batch * tl.num_programs(1) + head) * length_q + rows
        tl.store(lse_ptrs, row_max + tl.log2(row_sum), mask=row_ok)

    @triton.jit
    def _attention_delta_kernel(O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_od, stride_gb, stride_gh,
                                stride_gm, stride_gd, length_q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
        """``DELTA = rowsum(dO * O)``, ``(batch, n_heads, length_q)``: the softmax backward's row term."""
        head = tl.program_id(1)
        batch = tl.program_id(2).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        row_ok = rows[:, None] < length_q
        out = tl.load(O + batch * stride_ob + head * stride_oh + rows[:, None] * stride_om + dims[None, :] * stride_od,
                      mask=row_ok, other=0.0)
        grad = tl.load(DO + batch * stride_gb + head * stride_gh +
                       rows[:, None] * stride_gm + dims[None, :] * stride_gd,
                       mask=row_ok, other=0.0)
        delta = tl.sum(out.to(tl.float32) * grad.to(tl.float32), 1)
        tl.store(DELTA + (batch * tl.num_programs(1) + head) * length_q + rows, delta, mask=rows < length_q)

    @triton.jit
    def _dkdv_query_blocks(dk, dv, keys, values, q_base, g_base, lse_base, delta_base, stride_qm, stride_qd,
                           stride_gm, stride_gd, cols, start, stop, length_q, length_kv, qk_scale,
                           MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                           BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
        """Add to one key block's ``dk``, ``dv`` (fp32 ``(BLOCK_N, HEAD_DIM)``) the query blocks in ``[start, stop)``.

        Works on transposed tiles (keys along rows) so no tile is transposed twice.
        Query rows past ``length_q`` load as zeros and add nothing (their dO is zero).
        """
        dims = tl.arange(0, HEAD_DIM)
        for start_m in range(start, stop, BLOCK_M):
            rows = start_m + tl.arange(0, BLOCK_M)
            row_ok = rows < length_q
            q_t = tl.load(q_base + rows[None, :] * stride_qm + dims[:, None] * stride_qd, mask=row_ok[None, :],
                          other=0.0)
            lse = tl.load(lse_base + rows, mask=row_ok, other=0.0)
            scores_t = tl.dot(keys, q_t, input_precision=PRECISION) * qk_scale
            if MASKED:
                allowed = _allowed(rows[None, :], cols[:, None], length_q, length_kv, CAUSAL)
                scores_t = tl.where(allowed, scores_t, float("-inf"))
            probs_t = tl.exp2(scores_t - lse[None, :])
            grad = tl.load(g_base + rows[:, None] * stride_gm + dims[None, :] * stride_gd, mask=row_ok[:, None],
                           other=0.0)
            dv = tl.dot(probs_t.to(grad.dtype), grad, dv, input_precision=PRECISION)
            delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
            dprobs_t = tl.dot(values, tl.trans(grad), input_precision=PRECISION)
            dscores_t = probs_t * (dprobs_t - delta[None, :])
            dk = tl.dot(dscores_t.to(q_t.dtype), tl.trans(q_t), dk, input_precision=PRECISION)
        return dk, dv

    @triton.jit
    def _attention_backward_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                                        stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn,
                                        stride_kd, stride_vb, stride_vh, stride_vn, stride_vd, stride_gb, stride_gh,
                                        stride_gm, stride_gd, stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                                        stride_dvb, stride_dvh, stride_dvn, stride_dvd, n_heads, group_size, length_q,
                                        length_kv, qk_scale, scale, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        """One program per (key block, key/value head, batch): ``dK``, ``dV`` summed over the group's query heads."""
        start_n = tl.program_id(0) * BLOCK_N
        kv_head = tl.program_id(1)
        batch = tl.program_id(2).to(tl.int64)
        cols = start_n + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, HEAD_DIM)
        col_ok = cols[:, None] < length_kv
        keys = tl.load(K + batch * stride_kb + kv_head * stride_kh +
                       cols[:, None] * stride_kn + dims[None, :] * stride_kd,
                       mask=col_ok, other=0.0)
        values = tl.load(V + batch * stride_vb + kv_head * stride_vh + cols[:, None] * stride_vn
                         + dims[None, :] * stride_vd, mask=col_ok, other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        first, unmasked = _query_block_bounds(start_n, length_q, length_kv, CAUSAL, BLOCK_M, BLOCK_N)
        for head in range(kv_head * group_size, (kv_head + 1) * group_size):
            q_base = Q + batch * stride_qb + head * stride_qh
            g_base = DO + batch * stride_gb + head * stride_gh
            lse_base = LSE + (batch * n_heads + head) * length_q
            delta_base = DELTA + (batch * n_heads + head) * length_q
            dk, dv = _dkdv_query_blocks(
                dk, dv, keys, values, q_base, g_base, lse_base, delta_base, stride_qm, stride_qd, stride_gm, stride_gd,
                cols, first, unmasked, length_q, length_kv, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_M, PRECISION)
            dk, dv = _dkdv_query_blocks(
                dk, dv, keys, values, q_base, g_base, lse_base, delta_base, stride_qm, stride_qd, stride_gm, stride_gd,
                cols, unmasked, length_q, length_q, length_kv, qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_M, PRECISION)
        tl.store(DK + batch * stride_dkb + kv_head * stride_dkh +
                 cols[:, None] * stride_dkn + dims[None, :] * stride_dkd,
                 (dk * scale).to(DK.dtype.element_ty), mask=col_ok)
        tl.store(DV + batch * stride_dvb + kv_head * stride_dvh +
                 cols[:, None] * stride_dvn + dims[None, :] * stride_dvd,
                 dv.to(DV.dtype.element_ty), mask=col_ok)

    @triton.jit
    def _dq_key_blocks(dq, q, grad, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, rows,
                       start, stop, length_q, length_kv, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        """Add to one query block's ``dq`` (fp32, unscaled) the key blocks in ``[start, stop)``."""
        dims = tl.arange(0, HEAD_DIM)
        for start_n in range(start, stop, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            keys_t, values_t, scores = _key_block_scores(
                q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, rows, cols, dims, length_q,
                length_kv, qk_scale, True, MASKED, CAUSAL, PRECISION)
            probs = tl.exp2(scores - lse[:, None])
            dprobs = tl.dot(grad, values_t, input_precision=PRECISION)
            dscores = probs * (dprobs - delta[:, None])
            dq = tl.dot(dscores.to(keys_t.dtype), tl.trans(keys_t), dq, input_precision=PRECISION)
        return dq

    @triton.jit
    def _attention_backward_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                                      stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn,
                                      stride_kd, stride_vb, stride_vh, stride_vn, stride_vd, stride_gb, stride_gh,
                                      stride_gm, stride_gd, stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                                      group_size, length_q, length_kv, qk_scale, scale, CAUSAL: tl.constexpr,
                                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                      PRECISION: tl.constexpr):
        """One program per (query block, head, batch): ``dQ``, recomputing the probabilities from ``LSE``."""
        start_m = tl.program_id(0) * BLOCK_M
        head = tl.program_id(1)
        batch = tl.program_id(2).to(tl.int64)
        kv_head = head // group_size
        rows = start_m + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        row_ok = rows < length_q
        q = tl.load(Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qm + dims[None, :] * stride_qd,
                    mask=row_ok[:, None], other=0.0)
        grad = tl.load(DO + batch * stride_gb + head * stride_gh +
                       rows[:, None] * stride_gm + dims[None, :] * stride_gd,
                       mask=row_ok[:, None], other=0.0)
        row_offset = (batch * tl.num_programs(1) + head) * length_q + rows
        lse = tl.load(LSE + row_offset, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + row_offset, mask=row_ok, other=0.0)
        k_base = K + batch * stride_kb + kv_head * stride_kh
        v_base = V + batch * stride_vb + kv_head * stride_vh
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        unmasked, end = _key_block_bounds(start_m, length_q, length_kv, CAUSAL, BLOCK_M, BLOCK_N)
        dq = _dq_key_blocks(dq, q, grad, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, rows,
                            0, unmasked, length_q, length_kv, qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_N, PRECISION)
        dq = _dq_key_blocks(dq, q, grad, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, rows,
                            unmasked, end, length_q, length_kv, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_N, PRECISION)
        tl.store(DQ + batch * stride_dqb + head * stride_dqh + rows[:, None] * stride_dqm + dims[None, :] * stride_dqd,
                 (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])
