"""The SSD scan of Mamba-2: chunk states, state passing, chunk scan; Triton forward and backward kernels.

Mamba-2 (Dao & Gu, "Transformers are SSMs", ICML 2024, arXiv 2405.21060) runs, per head ``h``
with one scalar decay ``A[h] < 0``, the selective recurrence over a ``(head_dim, d_state)`` state

    ``H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T``,   ``y_t = H_t C_t``

(``B``, ``C`` shared by the ``heads / groups`` heads of a group).  The parallel form is the
chunked SSD algorithm: split the sequence into chunks of ``chunk_size`` positions; inside a
chunk the output is a quadratic (attention-like) form masked by the segment sums of the log
decays, ``y_i = sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) dt_j x_j`` (``cs``: the cumulative
``dt A`` in the chunk); each chunk's own contribution to the state, ``sum_j exp(cs_last - cs_j)
dt_j x_j B_j^T``, is summed into the states entering every chunk by a sequential pass over
chunks (not over time); those states then add ``exp(cs_i) H_c C_i`` to the outputs.

Triton kernels (one program per (batch, head, chunk), the full head and state in registers,
``tl.dot`` for every product, float32 accumulation): forward ``chunk_state`` -> ``state_passing``
-> ``chunk_scan``; backward ``output_state_grad`` (what the outputs of a chunk send back to the
state entering it) -> ``state_passing_backward`` (a reverse pass over chunks) -> ``chunk_backward``
(the gradients of x, dt, B, C and the log decays of one chunk, the decays' gradient turned into
dt's and A's by a reverse cumulative sum).  The states entering each chunk are saved by the
forward, so memory is ``batch * heads * chunks * head_dim * d_state``, never per position.
"""

from __future__ import annotations

import torch

from .backend import device_guard, interpreting, select, triton_available
from .tensor_checks import check_dtype, check_like, dtype_names, empty_result

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPES = (*TRITON_DTYPES, torch.float64)
# The Triton kernels hold one (head_dim, d_state) state and (chunk, chunk) tiles in registers.
MAX_TRITON_HEAD_DIM = 128
MAX_TRITON_STATE = 256
TRITON_CHUNK_SIZES = (16, 32, 64, 128)
# The float32 chunk backward holds its (chunk, head_dim, d_state) tiles in shared memory at 4 bytes an
# element: at chunk 64, head dim 64, state 128 it needs 272 KiB, past an H100's 227 KiB per block
# (scripts/compile_kernels.py measures it). Larger float32 footprints take the twin.
MAX_FLOAT32_TILE_FOOTPRINT = 64 * 64 * 128
# 32: the twin's fastest chunk on a CPU at Mamba-2's head dim 64 and state 64 (scripts/bench_mamba2.py times
# it beside 16 and 64: the quadratic in-chunk work grows with the chunk, the state work with the chunk count).
DEFAULT_CHUNK_SIZE = 32
# State rows per program of the state-passing kernels (which loop over chunks).
PASSING_ROWS = 16


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


# -- the PyTorch twin ----------------------------------------------------------------------------
def ssd_reference(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
                  chunk_size: int = DEFAULT_CHUNK_SIZE,
                  initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch twin of :func:`ssd` (same arguments, same result): the chunked algorithm in
    batched products (chunks of ``min(chunk_size, length)``), a loop over chunks only for the
    state passing, gradients by autograd.  Computed in float32 or wider."""
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    rep = heads // groups
    work = _work_dtype(x.dtype)
    q = min(chunk_size, length)
    n_chunks = -(-length // q)
    pad = n_chunks * q - length

    def chunked(t: torch.Tensor) -> torch.Tensor:  # (batch, length, ...) -> (batch, chunks, q, ...)
        t = t.to(work)
        if pad:  # dt = 0 past the end: no decay, no input, the state passes through unchanged
            t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, n_chunks, q, *t.shape[2:])

    xc = chunked(x).unflatten(3, (groups, rep))  # (b, c, q, g, r, p)
    dtc = chunked(dt).unflatten(3, (groups, rep))  # (b, c, q, g, r)
    bc, cc = chunked(B), chunked(C)  # (b, c, q, g, n)
    cs = (dtc * A.to(work).view(groups, rep)).cumsum(2)  # cumulative log decay in the chunk
    cs_t = cs.permute(0, 1, 3, 4, 2)  # (b, c, g, r, q)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    segment = (cs_t.unsqueeze(-1) - cs_t.unsqueeze(-2)).masked_fill(~causal, -torch.inf).exp()  # [i, j]
    scores = torch.einsum("bcign,bcjgn->bcgij", cc, bc).unsqueeze(3) * segment
    inputs = xc * dtc.unsqueeze(-1)  # dt x: dt weighs the inputs, cheaper here than on the (q, q) scores
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", scores, inputs)
    last = cs[:, :, -1:]  # (b, c, 1, g, r)
    weighted = inputs * (last - cs).exp().unsqueeze(-1)
    chunk_states = torch.einsum("bcjgrp,bcjgn->bcgrpn", weighted, bc)
    state = (x.new_zeros((batch, groups, rep, head_dim, d_state), dtype=work) if initial_state is None
             else initial_state.to(work).reshape(batch, groups, rep, head_dim, d_state))
    decay = last[:, :, 0].exp()[..., None, None]  # (b, c, g, r, 1, 1)
    entering = []
    # unbind, not indexing: the backward of x[:, c] would write a full-size zero gradient per chunk
    for own, chunk_decay in zip(chunk_states.unbind(1), decay.unbind(1)):
        entering.append(state)
        state = chunk_decay * state + own
    entering = torch.stack(entering, 1)  # (b, c, g, r, p, n)
    y = y + torch.einsum("bcign,bcgrpn->bcigrp", cc, entering) * cs.exp().unsqueeze(-1)
    y = y.reshape(batch, n_chunks * q, heads, head_dim)[:, :length]
    return y.to(x.dtype), state.reshape(batch, heads, head_dim, d_state)


def ssd_flops(length: int, heads: int, head_dim: int, groups: int, d_state: int,
              chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, int]:
    """Forward FLOPs of one sequence of :func:`ssd_reference`: ``{"matmul", "other"}``.

    ``matmul`` are its four batched products per chunk (``C B^T``, the masked scores by ``x``,
    the chunk states, the states' readout): ``2 q^2 (groups d_state + heads head_dim) +
    4 q heads head_dim d_state`` per chunk of ``q`` positions; ``other`` the decay masks, the
    weights and the state passing."""
    q = min(chunk_size, length)
    chunks = -(-length // q)
    inner = heads * head_dim
    per_chunk = 2 * q * q * (groups * d_state + inner) + 4 * q * inner * d_state
    other = chunks * (5 * heads * q * q + 4 * q * inner + 2 * inner * d_state) + 2 * length * heads
    return {"matmul": chunks * per_chunk, "other": other}


def ssd_recurrence(x, dt, A, B, C, *, initial_state=None):
    """The direct sequential recurrence, one step per position (benchmarks' baseline, tests' oracle
    in float64): same arguments and result as :func:`ssd`."""
    batch, length, heads, head_dim = x.shape
    rep = heads // B.shape[2]
    work = _work_dtype(x.dtype)
    x, dt, A = x.to(work), dt.to(work), A.to(work)
    B, C = B.to(work).repeat_interleave(rep, 2), C.to(work).repeat_interleave(rep, 2)
    state = (x.new_zeros(batch, heads, head_dim, B.shape[-1]) if initial_state is None
             else initial_state.to(work))
    outputs = []
    for t in range(length):
        state = (dt[:, t] * A).exp()[..., None, None] * state + \
            (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * B[:, t].unsqueeze(-2)
        outputs.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(outputs, 1) if outputs else x.new_zeros(x.shape)
    return y, state


# -- the public function -------------------------------------------------------------------------
def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mamba-2 selective scan (SSD) over a sequence; returns ``(y, final_state)``.

    ``H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T``, ``y_t = H_t C_t`` per head, from
    ``H_{-1} = initial_state`` (zeros when None).

    Args:
        x: ``(batch, length, heads, head_dim)``, float16, bfloat16, float32 or float64, any strides.
        dt: ``(batch, length, heads)``, the (positive) step sizes, on ``x``'s device, ``x``'s dtype
            or wider (Mamba-2 computes its softplus in float32).
        A: ``(heads,)``, the (negative) decay rates, any floating dtype.
        B, C: ``(batch, length, groups, d_state)``, ``x``'s dtype; ``groups`` divides ``heads``
            (head ``h`` reads group ``h // (heads / groups)``).
        chunk_size: positions per chunk (Triton: 16, 32, 64 or 128).
        initial_state: ``(batch, heads, head_dim, d_state)`` or None, any floating dtype.

    Returns:
        ``y``: ``(batch, length, heads, head_dim)`` in ``x``'s dtype; ``final_state``:
        ``(batch, heads, head_dim, d_state)`` in float32 (float64 for float64 inputs).

    Backends (:mod:`seqarch.kernels.backend`): the Triton kernels take float16, bfloat16 and
    float32 with ``head_dim <= 128``, ``d_state <= 256`` and a chunk size of 16 to 128
    (:func:`triton_limits`); other calls run the twin :func:`ssd_reference` under ``auto`` and
    raise ``ValueError`` under forced ``triton``.  A zero batch, length, head or state is an
    empty result (the state passes through).
    """
    _check_inputs(x, dt, A, B, C, chunk_size, initial_state)
    batch, _, heads, head_dim = x.shape
    d_state = B.shape[-1]
    work = _work_dtype(x.dtype)
    if x.numel() == 0 or B.numel() == 0:
        # Nothing to compute; the state then has no elements unless length == 0, when it passes through.
        state = (x.new_zeros((batch, heads, head_dim, d_state), dtype=work) if initial_state is None
                 else initial_state.to(work))
        return empty_result(x.shape, x, x, dt, B, C), state
    if select("ssd", x, triton_limits(x, dt, A, B, C, chunk_size=chunk_size, initial_state=initial_state)) == "triton":
        init = None if initial_state is None else initial_state.to(torch.float32)
        return SSDFunction.apply(x, dt, A.to(torch.float32), B, C, chunk_size, init)
    return ssd_reference(x, dt, A, B, C, chunk_size=chunk_size, initial_state=initial_state)


def triton_limits(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, initial_state: torch.Tensor | None = None) -> str | None:
    """Why the Triton path cannot take ``ssd(...)``, or None when it can."""
    if x.dtype not in TRITON_DTYPES:
        return f"x: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {x.dtype}"
    if x.shape[-1] > MAX_TRITON_HEAD_DIM:
        return f"x: expected head_dim <= {MAX_TRITON_HEAD_DIM} for the Triton path, got {x.shape[-1]}"
    if B.shape[-1] > MAX_TRITON_STATE:
        return f"B: expected d_state <= {MAX_TRITON_STATE} for the Triton path, got {B.shape[-1]}"
    if chunk_size not in TRITON_CHUNK_SIZES:
        return f"chunk_size: expected one of {TRITON_CHUNK_SIZES} for the Triton path, got {chunk_size}"
    if x.dtype == torch.float32:
        block_p, block_n = _blocks(x.shape[-1], B.shape[-1])
        if chunk_size * block_p * block_n >= MAX_FLOAT32_TILE_FOOTPRINT:
            return (f"chunk_size: expected chunk_size * head_dim * d_state < {MAX_FLOAT32_TILE_FOOTPRINT} for "
                    f"float32 on the Triton path (its backward's shared memory), got {chunk_size} * "
                    f"{x.shape[-1]} * {B.shape[-1]}; use bfloat16 or a smaller chunk_size")
    return None


def _check_inputs(x, dt, A, B, C, chunk_size, initial_state) -> None:
    """Raise a ValueError naming the first bad argument."""
    def shape_of(t):
        return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__

    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected rank 4 (batch, length, heads, head_dim), got {shape_of(x)}")
    check_dtype("x", x, DTYPES)
    batch, length, heads, head_dim = x.shape
    if not isinstance(dt, torch.Tensor) or tuple(dt.shape) != (batch, length, heads):
        raise ValueError(f"dt: expected shape ({batch}, {length}, {heads}), got {shape_of(dt)}")
    if not isinstance(A, torch.Tensor) or tuple(A.shape) != (heads,) or not A.is_floating_point():
        raise ValueError(f"A: expected a floating tensor of shape ({heads},), got {shape_of(A)}")
    if not isinstance(B, torch.Tensor) or B.dim() != 4 or tuple(B.shape[:2]) != (batch, length):
        raise ValueError(f"B: expected shape ({batch}, {length}, groups, d_state), got {shape_of(B)}")
    groups, d_state = B.shape[2], B.shape[3]
    if groups == 0 or heads % groups:
        raise ValueError(f"B: expected a number of groups dividing heads={heads}, got {groups}")
    if not isinstance(C, torch.Tensor) or C.shape != B.shape:
        raise ValueError(f"C: expected shape {tuple(B.shape)} (that of B), got {shape_of(C)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    if initial_state is not None:
        expected = (batch, heads, head_dim, d_state)
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != expected \
                or not initial_state.is_floating_point():
            raise ValueError(f"initial_state: expected a floating tensor of shape {expected} or None, "
                             f"got {shape_of(initial_state)}")
    check_dtype("dt", dt, DTYPES)
    check_like("x", x, {"B": B, "C": C})
    check_like("x", x, {"dt": dt, "A": A, "initial_state": initial_state}, dtype=False)


# -- Triton launchers and autograd ---------------------------------------------------------------
def _blocks(head_dim: int, d_state: int) -> tuple[int, int]:
    """The kernels' tiles over head dim and state: powers of two, at least 16 (``tl.dot``'s minimum)."""
    return tuple(max(16, 1 << (n - 1).bit_length()) for n in (head_dim, d_state))


def _warps(block_p: int, block_n: int, *, heavy: bool = False) -> int:
    """Warps per chunk program; ``heavy``: the backward, which holds about twice the tiles."""
    if interpreting():
        return 1
    return 8 if block_p * block_n >= (64 * 64 if heavy else 128 * 128) else 4


def _passing(chunk_size: int, block_n: int) -> dict:
    """Launch options of the state-passing kernels: ``PASSING_ROWS`` state rows per program, so that
    a program's sequential loop over chunks keeps its tile in registers."""
    return {"Q": chunk_size, "BLOCK_P": PASSING_ROWS, "BLOCK_N": block_n, "num_warps": 1 if interpreting() else 4}


def _forward(x, dt, A, B, C, chunk_size, initial_state):
    """Returns ``(y, final_state, cs, entering)``: the cumulative log decays ``(batch, heads, chunks,
    chunk)`` and the states entering each chunk ``(batch, heads, chunks, head_dim, d_state)`` (float32)."""
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    n_chunks = triton.cdiv(length, chunk_size)
    block_p, block_n = _blocks(head_dim, d_state)
    f32 = {"device": x.device, "dtype": torch.float32}
    cs = torch.empty(batch, heads, n_chunks, chunk_size, **f32)
    states = torch.empty(batch, heads, n_chunks, head_dim, d_state, **f32)  # chunk states, then entering
    final = torch.empty(batch, heads, head_dim, d_state, **f32)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    warps = _warps(block_p, block_n)
    common = {"Q": chunk_size, "BLOCK_P": block_p, "BLOCK_N": block_n, "num_warps": warps}
    grid = (n_chunks, heads, batch)
    _ssd_chunk_state_kernel[grid](
        x, dt, A, B, cs, states, *x.stride(), *dt.stride(), *B.stride(), length, heads // groups, head_dim, d_state,
        n_chunks, **common)
    init = final if initial_state is None else initial_state.contiguous()
    _ssd_state_passing_kernel[(heads, batch, triton.cdiv(head_dim, PASSING_ROWS))](
        states, cs, init, final, head_dim, d_state, n_chunks, HAS_INIT=initial_state is not None,
        **_passing(chunk_size, block_n))
    _ssd_chunk_scan_kernel[grid](
        x, dt, B, C, cs, states, y, *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *y.stride(),
        length, heads // groups, head_dim, d_state, n_chunks, **common)
    return y, final, cs, states


def _backward(dy, dfinal, x, dt, A, B, C, cs, entering, has_init):
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    n_chunks, chunk_size = cs.shape[2], cs.shape[3]
    block_p, block_n = _blocks(head_dim, d_state)
    f32 = {"device": x.device, "dtype": torch.float32}
    common = {"Q": chunk_size, "BLOCK_P": block_p, "BLOCK_N": block_n,
              "num_warps": _warps(block_p, block_n, heavy=True)}
    grid = (n_chunks, heads, batch)
    dstates = torch.empty(batch, heads, n_chunks, head_dim, d_state, **f32)  # output grads, then dS
    _ssd_output_state_grad_kernel[grid](
        dy, C, cs, dstates, *dy.stride(), *C.stride(), length, heads // groups, head_dim, d_state, n_chunks, **common)
    dinit = torch.empty(batch, heads, head_dim, d_state, **f32)
    dfinal = torch.zeros_like(dinit) if dfinal is None else dfinal.to(torch.float32).contiguous()
    _ssd_state_passing_backward_kernel[(heads, batch, triton.cdiv(head_dim, PASSING_ROWS))](
        dstates, cs, dfinal, dinit, head_dim, d_state, n_chunks, **_passing(chunk_size, block_n))
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    ddt = torch.empty(batch, length, heads, **f32)
    dB_heads = torch.empty(batch, length, heads, d_state, **f32)
    dC_heads = torch.empty(batch, length, heads, d_state, **f32)
    dA_part = torch.empty(batch, heads, n_chunks, **f32)
    _ssd_chunk_backward_kernel[grid](
        x, dt, A, B, C, dy, cs, entering, dstates, dx, ddt, dB_heads, dC_heads, dA_part,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *dy.stride(), *dx.stride(),
        length, heads // groups, head_dim, d_state, n_chunks, **common)
    dB = dB_heads.view(batch, length, groups, heads // groups, d_state).sum(3).to(B.dtype)
    dC = dC_heads.view(batch, length, groups, heads // groups, d_state).sum(3).to(C.dtype)
    return dx, ddt.to(dt.dtype), dA_part.sum((0, 2)), dB, dC, dinit if has_init else None


class SSDFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: ``apply(x, dt, A, B, C, chunk_size, initial_state)`` ->
    ``(y, final_state)``; ``A`` and ``initial_state`` float32, inputs checked by :func:`ssd`."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, initial_state):
        with device_guard(x):
            y, final, cs, entering = _forward(x, dt, A, B, C, chunk_size, initial_state)
        ctx.save_for_backward(x, dt, A, B, C, cs, entering)
        ctx.has_init = initial_state is not None
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, cs, entering = ctx.saved_tensors
        with device_guard(x):
            dx, ddt, dA, dB, dC, dinit = _backward(dy, dfinal, x, dt, A, B, C, cs, entering, ctx.has_init)
        return dx, ddt, dA, dB, dC, None, dinit


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _load_chunk(ptr, stride_b, stride_l, stride_h, stride_d, pid_b, head, start, length, offs_q, offs_d, dim):
        """The ``(Q, BLOCK)`` tile of a ``(batch, length, heads, dim)`` tensor at one head and chunk, as float32."""
        t = start + offs_q
        ptrs = (ptr + pid_b.to(tl.int64) * stride_b + head * stride_h + t[:, None] * stride_l
                + offs_d[None, :] * stride_d)
        return tl.load(ptrs, mask=(t < length)[:, None] & (offs_d < dim)[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _chunk_decays(dt_ptr, A_ptr, stride_db, stride_dl, stride_dh, pid_b, head, start, length, offs_q):
        """``dt`` and the cumulative log decays ``cs`` of one chunk (zeros past the end: no decay)."""
        t = start + offs_q
        dt = tl.load(dt_ptr + pid_b.to(tl.int64) * stride_db + t * stride_dl + head * stride_dh, mask=t < length,
                     other=0.0).to(tl.float32)
        cs = tl.cumsum(dt * tl.load(A_ptr + head), axis=0)
        return dt, cs

    @triton.jit
    def _state_tile(ptr, base, offs_p, offs_n, head_dim, d_state):
        mask = (offs_p < head_dim)[:, None] & (offs_n < d_state)[None, :]
        return ptr + base + offs_p[:, None] * d_state + offs_n[None, :], mask

    @triton.jit
    def _ssd_chunk_state_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, cs_ptr, states_ptr,
        stride_xb, stride_xl, stride_xh, stride_xp, stride_db, stride_dl, stride_dh,
        stride_bb, stride_bl, stride_bg, stride_bn,
        length, rep, head_dim, d_state, n_chunks,
        Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        chunk, head, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = chunk * Q
        offs_q, offs_p, offs_n = tl.arange(0, Q), tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
        dt, cs = _chunk_decays(dt_ptr, A_ptr, stride_db, stride_dl, stride_dh, pid_b, head, start, length, offs_q)
        row = (pid_b * tl.num_programs(1) + head).to(tl.int64) * n_chunks + chunk
        tl.store(cs_ptr + row * Q + offs_q, cs)
        last = tl.sum(tl.where(offs_q == Q - 1, cs, 0.0), axis=0)
        x = _load_chunk(x_ptr, stride_xb, stride_xl, stride_xh, stride_xp, pid_b, head, start, length, offs_q,
                        offs_p, head_dim)
        b = _load_chunk(B_ptr, stride_bb, stride_bl, stride_bg, stride_bn, pid_b, head // rep, start, length, offs_q,
                        offs_n, d_state)
        weighted = x * (tl.exp(last - cs) * dt)[:, None]
        state = tl.dot(tl.trans(weighted), b)  # (P, N)
        ptrs, mask = _state_tile(states_ptr, row * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        tl.store(ptrs, state, mask=mask)

    @triton.jit
    def _ssd_state_passing_kernel(
        states_ptr, cs_ptr, init_ptr, final_ptr, head_dim, d_state, n_chunks,
        HAS_INIT: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Overwrites each chunk's own state with the state entering the chunk."""
        head, pid_b, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        bh = (pid_b * tl.num_programs(0) + head).to(tl.int64)
        offs_p, offs_n = pid_p * BLOCK_P + tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
        ptrs, mask = _state_tile(init_ptr, bh * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        state = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        if HAS_INIT:
            state = tl.load(ptrs, mask=mask, other=0.0)
        for chunk in range(n_chunks):
            row = bh * n_chunks + chunk
            ptrs, mask = _state_tile(states_ptr, row * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
            own = tl.load(ptrs, mask=mask, other=0.0)
            tl.store(ptrs, state, mask=mask)
            state = tl.exp(tl.load(cs_ptr + row * Q + Q - 1)) * state + own
        ptrs, mask = _state_tile(final_ptr, bh * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        tl.store(ptrs, state, mask=mask)

    @triton.jit
    def _ssd_chunk_scan_kernel(
        x_ptr, dt_ptr, B_ptr, C_ptr, cs_ptr, states_ptr, y_ptr,
        stride_xb, stride_xl, stride_xh, stride_xp, stride_db, stride_dl, stride_dh,
        stride_bb, stride_bl, stride_bg, stride_bn, stride_cb, stride_cl, stride_cg, stride_cn,
        stride_yb, stride_yl, stride_yh, stride_yp,
        length, rep, head_dim, d_state, n_chunks,
        Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        chunk, head, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = chunk * Q
        offs_q, offs_p, offs_n = tl.arange(0, Q), tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
        row = (pid_b * tl.num_programs(1) + head).to(tl.int64) * n_chunks + chunk
        cs = tl.load(cs_ptr + row * Q + offs_q)
        t = start + offs_q
        dt = tl.load(dt_ptr + pid_b.to(tl.int64) * stride_db + t * stride_dl + head * stride_dh, mask=t < length,
                     other=0.0).to(tl.float32)
        x = _load_chunk(x_ptr, stride_xb, stride_xl, stride_xh, stride_xp, pid_b, head, start, length, offs_q,
                        offs_p, head_dim)
        b = _load_chunk(B_ptr, stride_bb, stride_bl, stride_bg, stride_bn, pid_b, head // rep, start, length, offs_q,
                        offs_n, d_state)
        c = _load_chunk(C_ptr, stride_cb, stride_cl, stride_cg, stride_cn, pid_b, head // rep, start, length, offs_q,
                        offs_n, d_state)
        causal = offs_q[:, None] >= offs_q[None, :]
        segment = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], -float("inf")))
        scores = tl.dot(c, tl.trans(b)) * segment * dt[None, :]
        ptrs, mask = _state_tile(states_ptr, row * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        entering = tl.load(ptrs, mask=mask, other=0.0)  # (P, N)
        y = tl.dot(scores, x) + tl.dot(c, tl.trans(entering)) * tl.exp(cs)[:, None]
        out = y_ptr + pid_b.to(tl.int64) * stride_yb + head * stride_yh + t[:, None] * stride_yl + \
            offs_p[None, :] * stride_yp
        tl.store(out, y.to(y_ptr.dtype.element_ty), mask=(t < length)[:, None] & (offs_p < head_dim)[None, :])

    @triton.jit
    def _ssd_output_state_grad_kernel(
        dy_ptr, C_ptr, cs_ptr, dstates_ptr,
        stride_gb, stride_gl, stride_gh, stride_gp, stride_cb, stride_cl, stride_cg, stride_cn,
        length, rep, head_dim, d_state, n_chunks,
        Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """What the outputs of a chunk send back to the state entering it: ``sum_i exp(cs_i) dy_i C_i^T``."""
        chunk, head, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = chunk * Q
        offs_q, offs_p, offs_n = tl.arange(0, Q), tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
        row = (pid_b * tl.num_programs(1) + head).to(tl.int64) * n_chunks + chunk
        cs = tl.load(cs_ptr + row * Q + offs_q)
        dy = _load_chunk(dy_ptr, stride_gb, stride_gl, stride_gh, stride_gp, pid_b, head, start, length, offs_q,
                        offs_p, head_dim)
        c = _load_chunk(C_ptr, stride_cb, stride_cl, stride_cg, stride_cn, pid_b, head // rep, start, length, offs_q,
                        offs_n, d_state)
        grad = tl.dot(tl.trans(dy * tl.exp(cs)[:, None]), c)
        ptrs, mask = _state_tile(dstates_ptr, row * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        tl.store(ptrs, grad, mask=mask)

    @triton.jit
    def _ssd_state_passing_backward_kernel(
        dstates_ptr, cs_ptr, dfinal_ptr, dinit_ptr, head_dim, d_state, n_chunks,
        Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Reverse pass over chunks: overwrites each chunk's output gradient with the gradient of the
        state leaving the chunk (``dS_c``); the gradient of the state entering chunk 0 is ``dinit``."""
        head, pid_b, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        bh = (pid_b * tl.num_programs(0) + head).to(tl.int64)
        offs_p, offs_n = pid_p * BLOCK_P + tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
        ptrs, mask = _state_tile(dfinal_ptr, bh * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        grad = tl.load(ptrs, mask=mask, other=0.0)
        for back in range(n_chunks):
            row = bh * n_chunks + n_chunks - 1 - back
            ptrs, mask = _state_tile(dstates_ptr, row * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
            from_outputs = tl.load(ptrs, mask=mask, other=0.0)
            tl.store(ptrs, grad, mask=mask)
            grad = tl.exp(tl.load(cs_ptr + row * Q + Q - 1)) * grad + from_outputs
        ptrs, mask = _state_tile(dinit_ptr, bh * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        tl.store(ptrs, grad, mask=mask)

    @triton.jit
    def _ssd_chunk_backward_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, dy_ptr, cs_ptr, entering_ptr, dstates_ptr,
        dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr,
        stride_xb, stride_xl, stride_xh, stride_xp, stride_db, stride_dl, stride_dh,
        stride_bb, stride_bl, stride_bg, stride_bn, stride_cb, stride_cl, stride_cg, stride_cn,
        stride_gb, stride_gl, stride_gh, stride_gp, stride_ob, stride_ol, stride_oh, stride_op,
        length, rep, head_dim, d_state, n_chunks,
        Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        chunk, head, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        heads = tl.num_programs(1)
        start = chunk * Q
        offs_q, offs_p, offs_n = tl.arange(0, Q), tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
        row = (pid_b * heads + head).to(tl.int64) * n_chunks + chunk
        t = start + offs_q
        here = t < length
        cs = tl.load(cs_ptr + row * Q + offs_q)
        last = tl.sum(tl.where(offs_q == Q - 1, cs, 0.0), axis=0)
        dt = tl.load(dt_ptr + pid_b.to(tl.int64) * stride_db + t * stride_dl + head * stride_dh, mask=here,
                     other=0.0).to(tl.float32)
        x = _load_chunk(x_ptr, stride_xb, stride_xl, stride_xh, stride_xp, pid_b, head, start, length, offs_q,
                        offs_p, head_dim)
        dy = _load_chunk(dy_ptr, stride_gb, stride_gl, stride_gh, stride_gp, pid_b, head, start, length, offs_q,
                        offs_p, head_dim)
        b = _load_chunk(B_ptr, stride_bb, stride_bl, stride_bg, stride_bn, pid_b, head // rep, start, length, offs_q,
                        offs_n, d_state)
        c = _load_chunk(C_ptr, stride_cb, stride_cl, stride_cg, stride_cn, pid_b, head // rep, start, length, offs_q,
                        offs_n, d_state)
        ptrs, mask = _state_tile(entering_ptr, row * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        entering = tl.load(ptrs, mask=mask, other=0.0)  # H_c (P, N)
        ptrs, mask = _state_tile(dstates_ptr, row * head_dim * d_state, offs_p, offs_n, head_dim, d_state)
        dleaving = tl.load(ptrs, mask=mask, other=0.0)  # dS_c (P, N)

        causal = offs_q[:, None] >= offs_q[None, :]
        segment = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], -float("inf")))  # [i, j]
        cb_dot = tl.dot(c, tl.trans(b))  # C_i . B_j
        cb = cb_dot * segment  # (C_i . B_j) exp(cs_i - cs_j)
        dyx = tl.dot(dy, tl.trans(x)) * segment  # (dy_i . x_j) exp(cs_i - cs_j)
        to_end = tl.exp(last - cs)  # exp(cs_last - cs_j)
        x_ds = tl.dot(x, dleaving)  # (Q, N): x_j^T dS
        b_ds = tl.dot(b, tl.trans(dleaving))  # (Q, P): dS B_j
        dy_h = tl.dot(dy, entering)  # (Q, N): dy_i^T H_c

        dx = tl.dot(tl.trans(cb), dy) * dt[:, None] + b_ds * (to_end * dt)[:, None]
        db = tl.dot(tl.trans(dyx), c) * dt[:, None] + x_ds * (to_end * dt)[:, None]
        dc = tl.dot(dyx * dt[None, :], b) + dy_h * tl.exp(cs)[:, None]
        from_state = tl.sum(x_ds * b, axis=1)  # x_j^T dS B_j
        pair = cb_dot * dyx  # dy_i . d y_i / d(dt_j), the intra-chunk part
        ddt = tl.sum(pair, axis=0) + to_end * from_state
        # Gradient of the cumulative log decays cs, then of the log decays dt A (a reverse cumsum).
        mixed = pair * dt[None, :]  # dy_i . d y_i / d(cs_i - cs_j)
        dcs = tl.sum(mixed, axis=1) - tl.sum(mixed, axis=0) + tl.exp(cs) * tl.sum(dy_h * c, axis=1)
        into_state = to_end * dt * from_state
        dcs -= into_state
        dlast = tl.sum(into_state, axis=0) + tl.exp(last) * tl.sum(tl.sum(dleaving * entering, axis=1), axis=0)
        dcs += tl.where(offs_q == Q - 1, dlast, 0.0)
        dlog = tl.sum(dcs, axis=0) - tl.cumsum(dcs, axis=0) + dcs  # sum over k >= t
        a = tl.load(A_ptr + head)
        ddt += a * dlog
        tl.store(dA_ptr + row, tl.sum(tl.where(here, dt * dlog, 0.0), axis=0))

        out = pid_b.to(tl.int64) * stride_ob + head * stride_oh + t[:, None] * stride_ol
        tl.store(dx_ptr + out + offs_p[None, :] * stride_op, dx.to(dx_ptr.dtype.element_ty),
                 mask=here[:, None] & (offs_p < head_dim)[None, :])
        tl.store(ddt_ptr + (pid_b.to(tl.int64) * length + t) * heads + head, ddt, mask=here)
        per_head = ((pid_b.to(tl.int64) * length + t[:, None]) * heads + head) * d_state + offs_n[None, :]
        state_mask = here[:, None] & (offs_n < d_state)[None, :]
        tl.store(dB_ptr + per_head, db, mask=state_mask)
        tl.store(dC_ptr + per_head, dc, mask=state_mask)
