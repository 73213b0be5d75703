"""The chunked (gated) delta rule of DeltaNet and Gated DeltaNet.

DeltaNet (Yang et al., "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length", NeurIPS 2024) writes to its ``d_k x d_v`` state by the delta rule, and Gated DeltaNet
(Yang, Kautz and Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025)
decays it first by a per-head gate ``alpha_t = exp(g_t)``:

    ``S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T``,   ``o_t = S_t^T q_t``

(``g = 0`` is DeltaNet).  The chunked form is the WY representation: in a chunk of ``C`` tokens
starting from state ``S``, with ``b`` the in-chunk running sum of ``g`` and
``Gamma_ij = exp(b_i - b_j)`` (``i >= j``), the corrections ``U`` solve the unit lower-triangular
system ``(I + tril(diag(beta) (K K^T * Gamma), -1)) U = diag(beta) (V - diag(exp(b)) K S)``; then
``O = diag(exp(b)) Q S + tril(Q K^T * Gamma) U`` and ``S <- exp(b_C) S + (K * exp(b_C - b))^T U``.
Nothing of size ``L x L`` is built, and every exponential is of a difference ``<= 0``.

Shapes: ``q, k: (batch, heads, length, d_k)`` (keys L2-normalised by the caller, as both papers do),
``v: (batch, heads, length, d_v)``, ``beta: (batch, heads, length)`` in ``(0, 1]`` (or ``(0, 2)``),
``log_decay``: None or ``(batch, heads, length)``; states ``(batch, heads, d_k, d_v)``.

The Triton kernels run the same chunked form with chunks of 16 tokens, one program per (value block,
batch and head) walking the chunks in order: the forward keeps the chunk-start states for the backward,
which walks the chunks in reverse carrying the state's gradient.  The triangular inverse
``(I + A)^(-1)`` is a 16-step forward substitution in registers.
"""

from __future__ import annotations

import torch

from .backend import device_guard, select, triton_available
from .chunked_linear_attention import state_dtype
from .tensor_checks import check_dtype, check_like, dot_precision, dtype_names, shape_error

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPES = (*TRITON_DTYPES, torch.float64)
MAX_TRITON_KEY_DIM = 128
DEFAULT_CHUNK = 64


def delta_rule_step(q_t, k_t, v_t, beta_t, log_decay_t, state, inplace: bool = False):
    """One token: ``q_t, k_t: (batch, heads, d_k)``, ``v_t: (batch, heads, d_v)``, ``beta_t`` and
    ``log_decay_t`` (or None): ``(batch, heads)``; ``state: (batch, heads, d_k, d_v)``.
    Returns ``(o_t: (batch, heads, d_v), new_state)``; ``inplace`` updates ``state`` itself (no
    autograd through it) instead of making a new one."""
    work = state.dtype
    q_t, k_t, v_t, beta_t = (t if t.dtype == work else t.to(work) for t in (q_t, k_t, v_t, beta_t))
    batch, heads, d_k, d_v = state.shape
    if log_decay_t is not None:  # decayed first: both reads below are of alpha S
        decay = log_decay_t.to(work).exp()[..., None, None]
        state = state.mul_(decay) if inplace else state * decay
    # Reads as (batch * heads) products of a row by a d_k x d_v matrix: at batch 1 on a CPU two such
    # bmm calls cost less than stacking (k; q) into one product and splitting it again.
    read_k = torch.bmm(k_t.reshape(batch * heads, 1, d_k), state.reshape(batch * heads, d_k, d_v))
    correction = beta_t.unsqueeze(-1) * (v_t - read_k.view(batch, heads, d_v))  # (batch, heads, d_v)
    keys, update = k_t.unsqueeze(-1), correction.unsqueeze(-2)
    state = state.addcmul_(keys, update) if inplace else torch.addcmul(state, keys, update)
    o_t = torch.bmm(q_t.reshape(batch * heads, 1, d_k), state.reshape(batch * heads, d_k, d_v))
    return o_t.view(batch, heads, d_v), state


def delta_rule_recurrence(q, k, v, beta, log_decay=None, initial_state=None):
    """The token-by-token recurrence (the definition, for tests and benchmarks): same arguments and
    result as :func:`delta_rule`."""
    batch, heads, length, d_k = q.shape
    state = _initial(initial_state, batch, heads, d_k, v)
    outputs = []
    for t in range(length):
        g_t = None if log_decay is None else log_decay[:, :, t]
        o_t, state = delta_rule_step(q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], g_t, state)
        outputs.append(o_t.to(v.dtype))
    out = torch.stack(outputs, 2) if outputs else v.new_zeros(batch, heads, 0, v.shape[-1])
    return out, state


def _initial(initial_state, batch, heads, d_k, v) -> torch.Tensor:
    work = state_dtype(v.dtype)
    if initial_state is None:
        return torch.zeros(batch, heads, d_k, v.shape[-1], device=v.device, dtype=work)
    return initial_state.to(work)


def delta_rule_reference(q, k, v, beta, log_decay=None, initial_state=None, chunk_size=DEFAULT_CHUNK):
    """The PyTorch twin of :func:`delta_rule`: the chunked WY form in the state dtype, one loop step per chunk."""
    batch, heads, length, d_k = q.shape
    work = state_dtype(v.dtype)
    state = _initial(initial_state, batch, heads, d_k, v)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    eye = torch.eye(chunk_size, device=q.device, dtype=work)
    outputs = []
    # split, not slicing: the backward of t[:, :, start:end] writes a full-size zero gradient per chunk
    # (quadratic in the length); split's backward is one concatenation.
    n_chunks = -(-length // chunk_size)  # zero for an empty sequence (whose split would give one empty chunk)
    chunks = zip(*(t.split(chunk_size, dim=2)[:n_chunks] for t in (q, k, v, beta)),
                 log_decay.split(chunk_size, dim=2)[:n_chunks] if log_decay is not None else [None] * n_chunks)
    for q_i, k_i, v_i, beta_i, log_decay_i in chunks:
        size = q_i.shape[2]
        qc, kc, vc, bc = (t.to(work) for t in (q_i, k_i, v_i, beta_i))
        mask = causal[:size, :size]
        if log_decay is None:
            gamma = decay = None
            gap = mask.to(work)
        else:
            cum = log_decay_i.to(work).cumsum(2)
            gamma = cum.exp().unsqueeze(-1)  # (batch, heads, C, 1): decay since the chunk began
            gap = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~mask, float("-inf")).exp()
            decay = (cum[:, :, -1:] - cum).exp().unsqueeze(-1)  # to the chunk's end
        read = kc @ state if gamma is None else gamma * (kc @ state)
        lower = ((kc @ kc.transpose(-1, -2)) * gap).tril(-1) * bc.unsqueeze(-1)
        corrections = torch.linalg.solve_triangular(eye[:size, :size] + lower, bc.unsqueeze(-1) * (vc - read),
                                                    upper=False, unitriangular=True)
        inter = qc @ state if gamma is None else gamma * (qc @ state)
        outputs.append(inter + ((qc @ kc.transpose(-1, -2)) * gap) @ corrections)
        if gamma is None:
            state = state + kc.transpose(-1, -2) @ corrections
        else:
            state = state * gamma[:, :, -1:] + (kc * decay).transpose(-1, -2) @ corrections
    out = torch.cat(outputs, 2) if outputs else v.new_zeros(batch, heads, 0, v.shape[-1], dtype=work)
    return out.to(v.dtype), state


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               log_decay: torch.Tensor | None = None, initial_state: torch.Tensor | None = None, *,
               chunk_size: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gated) delta rule, chunked: ``S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T``,
    ``o_t = S_t^T q_t``.

    Args:
        q, k: ``(batch, heads, length, d_k)``, float16, bfloat16, float32 or float64.
        v: ``(batch, heads, length, d_v)``, same dtype and device.
        beta: ``(batch, heads, length)``, the write strengths.
        log_decay: None (DeltaNet) or ``(batch, heads, length)``, ``log a_t <= 0`` (Gated DeltaNet).
        initial_state: None (zeros) or ``(batch, heads, d_k, d_v)``.
        chunk_size: tokens per chunk (a power of two, at least 16).

    Returns:
        ``(o: (batch, heads, length, d_v) in v's dtype, final_state)``, the state in float32
        (float64 for float64 inputs).  A zero length returns an empty ``o`` and the initial state.

    Backends (:mod:`seqarch.kernels.backend`): the Triton kernels (float32 accumulation, chunks of 16
    whatever ``chunk_size`` says) take float16, bfloat16 and float32 with ``d_k <= 128``
    (:func:`triton_limits`); the rest runs the twin (:func:`delta_rule_reference`).
    """
    _check_inputs(q, k, v, beta, log_decay, initial_state, chunk_size)
    if q.numel() and v.numel() and select("delta_rule", q, triton_limits(q, k, v, beta, log_decay)) == "triton":
        return DeltaRuleFunction.apply(q, k, v, beta, log_decay, initial_state)
    return delta_rule_reference(q, k, v, beta, log_decay, initial_state, chunk_size)


def triton_limits(q, k, v, beta, log_decay=None, initial_state=None, *, chunk_size=DEFAULT_CHUNK) -> str | None:
    """Why the Triton path cannot take this call, or None when it can."""
    if q.dtype not in TRITON_DTYPES:
        return f"q: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {q.dtype}"
    if q.shape[-1] > MAX_TRITON_KEY_DIM:
        return f"q: expected d_k <= {MAX_TRITON_KEY_DIM} for the Triton path, got {q.shape[-1]}"
    return None


def _check_inputs(q, k, v, beta, log_decay, initial_state, chunk_size) -> None:
    """Raise a ValueError naming the first bad argument."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise shape_error("q", "rank 4 (batch, heads, length, d_k)", q)
    check_dtype("q", q, DTYPES)
    batch, heads, length, d_k = q.shape
    if not isinstance(k, torch.Tensor) or k.shape != q.shape:
        raise shape_error("k", f"shape {tuple(q.shape)} (that of q)", k)
    if not isinstance(v, torch.Tensor) or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise shape_error("v", f"shape ({batch}, {heads}, {length}, d_v)", v)
    if not isinstance(beta, torch.Tensor) or beta.shape != q.shape[:3]:
        raise shape_error("beta", f"shape {tuple(q.shape[:3])}", beta)
    if log_decay is not None and (not isinstance(log_decay, torch.Tensor) or log_decay.shape != q.shape[:3]):
        raise shape_error("log_decay", f"None or shape {tuple(q.shape[:3])}", log_decay)
    if initial_state is not None and (not isinstance(initial_state, torch.Tensor)
                                      or initial_state.shape != (batch, heads, d_k, v.shape[-1])):
        raise shape_error("initial_state", f"None or shape {(batch, heads, d_k, v.shape[-1])}", initial_state)
    if (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 16
            or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size: expected a power of two >= 16, got {chunk_size!r}")
    check_like("q", q, {"k": k, "v": v, "beta": beta, "log_decay": log_decay})
    check_like("q", q, {"initial_state": initial_state}, dtype=False)


# -- the Triton path ----------------------------------------------------------------------------
TRITON_CHUNK = 16


def _tiles(q: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int]:
    """``(BK, BV, number of value blocks)``: all keys in one tile, values in blocks of at most 64."""
    block_k = max(16, triton.next_power_of_2(q.shape[-1]))
    block_v = max(16, min(64, triton.next_power_of_2(v.shape[-1])))
    return block_k, block_v, triton.cdiv(v.shape[-1], block_v)


def _decay_strides(log_decay, q):
    return (0, 0, 0) if log_decay is None else log_decay.stride()


def _forward(q, k, v, beta, log_decay, initial_state):
    """Returns ``(o, final_state, chunk-start states (batch * heads, chunks, d_k, d_v))``."""
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    block_k, block_v, n_v = _tiles(q, v)
    n_chunks = triton.cdiv(length, TRITON_CHUNK)
    out = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    final = torch.empty(batch, heads, d_k, d_v, device=v.device, dtype=torch.float32)
    starts = torch.empty(batch * heads, n_chunks, d_k, d_v, device=v.device, dtype=torch.float32)
    s0 = final if initial_state is None else initial_state
    _delta_forward_kernel[(n_v, batch * heads)](
        q, k, v, beta, beta if log_decay is None else log_decay, s0, out, final, starts,
        *q.stride(), *k.stride(), *v.stride(), *beta.stride(), *_decay_strides(log_decay, q), *s0.stride(),
        *out.stride(), heads, length, d_k, d_v,
        GATED=log_decay is not None, HAS_INITIAL=initial_state is not None, CHUNK=TRITON_CHUNK,
        BK=block_k, BV=block_v, PRECISION=dot_precision(q.dtype), num_warps=4,
    )
    return out, final, starts


def _backward(q, k, v, beta, log_decay, starts, grad_out, grad_final):
    """Returns ``(dq, dk, dv, dbeta, dlog_decay or None, d_initial)``."""
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    block_k, block_v, n_v = _tiles(q, v)
    dq_part = torch.empty(n_v, batch, heads, length, d_k, device=q.device, dtype=torch.float32)
    dk_part = torch.empty_like(dq_part)
    dbeta_part = torch.empty(n_v, batch, heads, length, device=q.device, dtype=torch.float32)
    dg_part = torch.empty_like(dbeta_part)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    d_initial = torch.empty(batch, heads, d_k, d_v, device=v.device, dtype=torch.float32)
    dsf = d_initial if grad_final is None else grad_final
    _delta_backward_kernel[(n_v, batch * heads)](
        q, k, v, beta, beta if log_decay is None else log_decay, starts, dsf, grad_out,
        dq_part, dk_part, dv, dbeta_part, dg_part, d_initial,
        *q.stride(), *k.stride(), *v.stride(), *beta.stride(), *_decay_strides(log_decay, q), *dsf.stride(),
        *grad_out.stride(), *dv.stride(), heads, length, d_k, d_v,
        GATED=log_decay is not None, HAS_FINAL_GRAD=grad_final is not None, CHUNK=TRITON_CHUNK,
        BK=block_k, BV=block_v, PRECISION=dot_precision(q.dtype), num_warps=4,
    )
    dg = dg_part.sum(0) if log_decay is not None else None
    return dq_part.sum(0), dk_part.sum(0), dv, dbeta_part.sum(0), dg, d_initial


class DeltaRuleFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: ``apply(q, k, v, beta, log_decay, initial_state) ->
    (o, final_state)``, inputs checked by :func:`delta_rule`."""

    @staticmethod
    def forward(ctx, q, k, v, beta, log_decay, initial_state):
        with device_guard(q):
            out, final, starts = _forward(q, k, v, beta, log_decay, initial_state)
        ctx.save_for_backward(q, k, v, beta, log_decay, starts)
        ctx.initial_dtype = None if initial_state is None else initial_state.dtype
        return out, final

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        q, k, v, beta, log_decay, starts = ctx.saved_tensors
        with device_guard(q):
            dq, dk, dv, dbeta, dg, d_initial = _backward(q, k, v, beta, log_decay, starts, grad_out, grad_final)
        d_initial = None if ctx.initial_dtype is None else d_initial.to(ctx.initial_dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dbeta.to(beta.dtype),
                None if dg is None else dg.to(log_decay.dtype), d_initial)


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _unit_lower_inverse(a, CHUNK: tl.constexpr):
        """``(I + a)^(-1)`` for a strictly lower-triangular ``(CHUNK, CHUNK)`` ``a``: forward substitution,
        row ``i`` of the inverse is ``e_i - sum_{j < i} a_ij row_j``."""
        rows = tl.arange(0, CHUNK)
        inverse = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
        for i in tl.static_range(1, CHUNK):
            a_i = tl.sum(tl.where(rows[:, None] == i, a, 0.0), axis=0)  # row i of a, indexed by j
            update = tl.sum(a_i[:, None] * inverse, axis=0)
            inverse = tl.where(rows[:, None] == i, inverse - update[None, :], inverse)
        return inverse

    @triton.jit
    def _load_chunk(q_base, k_base, v_base, beta_base, g_base, t, rk, rv, length, d_k, d_v,
                    stride_ql, stride_qd, stride_kl, stride_kd, stride_vl, stride_vd, stride_bl, stride_gl,
                    GATED: tl.constexpr, CHUNK: tl.constexpr):
        """One chunk's ``q, k (C, BK)``, ``v (C, BV)``, ``beta (C,)`` in float32, and the decay's in-chunk
        running sum ``cum (C,)`` and last value (zeros without a gate)."""
        t_ok = t < length
        qk_ok = t_ok[:, None] & (rk < d_k)[None, :]
        q = tl.load(q_base + t[:, None] * stride_ql + rk[None, :] * stride_qd, mask=qk_ok, other=0.0).to(tl.float32)
        k = tl.load(k_base + t[:, None] * stride_kl + rk[None, :] * stride_kd, mask=qk_ok, other=0.0).to(tl.float32)
        v = tl.load(v_base + t[:, None] * stride_vl + rv[None, :] * stride_vd,
                    mask=t_ok[:, None] & (rv < d_v)[None, :], other=0.0).to(tl.float32)
        beta = tl.load(beta_base + t * stride_bl, mask=t_ok, other=0.0).to(tl.float32)
        if GATED:
            cum = tl.cumsum(tl.load(g_base + t * stride_gl, mask=t_ok, other=0.0).to(tl.float32), axis=0)
        else:
            cum = tl.zeros((CHUNK,), dtype=tl.float32)
        last = tl.sum(tl.where(tl.arange(0, CHUNK) == CHUNK - 1, cum, 0.0), axis=0)
        return q, k, v, beta, cum, last

    @triton.jit
    def _delta_forward_kernel(
        q_ptr, k_ptr, v_ptr, beta_ptr, g_ptr, s0_ptr, o_ptr, sf_ptr, starts_ptr,
        stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd, stride_bb, stride_bh, stride_bl, stride_gb, stride_gh, stride_gl,
        stride_sb, stride_sh, stride_sk, stride_sv, stride_ob, stride_oh, stride_ol, stride_od,
        heads, length, d_k, d_v,
        GATED: tl.constexpr, HAS_INITIAL: tl.constexpr, CHUNK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_v, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = (pid_bh // heads).to(tl.int64), (pid_bh % heads).to(tl.int64)
        rk, rv, rc = tl.arange(0, BK), pid_v * BV + tl.arange(0, BV), tl.arange(0, CHUNK)
        state_ok = (rk < d_k)[:, None] & (rv < d_v)[None, :]
        causal = rc[:, None] >= rc[None, :]
        strict = rc[:, None] > rc[None, :]
        q_base, k_base = q_ptr + b * stride_qb + h * stride_qh, k_ptr + b * stride_kb + h * stride_kh
        v_base, o_base = v_ptr + b * stride_vb + h * stride_vh, o_ptr + b * stride_ob + h * stride_oh
        beta_base, g_base = beta_ptr + b * stride_bb + h * stride_bh, g_ptr + b * stride_gb + h * stride_gh
        state_offsets = rk[:, None] * d_v + rv[None, :]
        state = tl.zeros((BK, BV), dtype=tl.float32)
        if HAS_INITIAL:
            state = tl.load(s0_ptr + b * stride_sb + h * stride_sh + rk[:, None] * stride_sk + rv[None, :] * stride_sv,
                            mask=state_ok, other=0.0).to(tl.float32)
        n_chunks = tl.cdiv(length, CHUNK)
        for chunk in range(n_chunks):
            t = chunk * CHUNK + rc
            q, k, v, beta, cum, last = _load_chunk(q_base, k_base, v_base, beta_base, g_base, t, rk, rv, length,
                                                   d_k, d_v, stride_ql, stride_qd, stride_kl, stride_kd, stride_vl,
                                                   stride_vd, stride_bl, stride_gl, GATED, CHUNK)
            tl.store(starts_ptr + (pid_bh.to(tl.int64) * n_chunks + chunk) * d_k * d_v + state_offsets, state,
                     mask=state_ok)
            gap = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))
            gamma = tl.exp(cum)
            kk = tl.dot(k, tl.trans(k), input_precision=PRECISION)
            lower = tl.where(strict, kk * gap, 0.0) * beta[:, None]
            inverse = _unit_lower_inverse(lower, CHUNK)
            read = tl.dot(k, state, input_precision=PRECISION) * gamma[:, None]
            corrections = tl.dot(inverse, beta[:, None] * (v - read), input_precision=PRECISION)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * gap
            out = tl.dot(q, state, input_precision=PRECISION) * gamma[:, None]
            out += tl.dot(scores, corrections, input_precision=PRECISION)
            k_end = k * tl.exp(last - cum)[:, None]
            state = state * tl.exp(last) + tl.dot(tl.trans(k_end), corrections, input_precision=PRECISION)
            tl.store(o_base + t[:, None] * stride_ol + rv[None, :] * stride_od, out.to(o_ptr.dtype.element_ty),
                     mask=(t < length)[:, None] & (rv < d_v)[None, :])
        tl.store(sf_ptr + pid_bh.to(tl.int64) * d_k * d_v + state_offsets, state, mask=state_ok)

    @triton.jit
    def _delta_backward_kernel(
        q_ptr, k_ptr, v_ptr, beta_ptr, g_ptr, starts_ptr, dsf_ptr, do_ptr,
        dq_ptr, dk_ptr, dv_ptr, dbeta_ptr, dg_ptr, ds0_ptr,
        stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd, stride_bb, stride_bh, stride_bl, stride_gb, stride_gh, stride_gl,
        stride_sb, stride_sh, stride_sk, stride_sv, stride_ob, stride_oh, stride_ol, stride_od,
        stride_dvb, stride_dvh, stride_dvl, stride_dvd,
        heads, length, d_k, d_v,
        GATED: tl.constexpr, HAS_FINAL_GRAD: tl.constexpr, CHUNK: tl.constexpr, BK: tl.constexpr,
        BV: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """Reverse over chunks with the state's gradient ``dS``; this value block's parts of ``dq, dk,
        dbeta, dg`` (summed over blocks by the caller), its ``dv`` and ``d_initial`` columns."""
        pid_v, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = (pid_bh // heads).to(tl.int64), (pid_bh % heads).to(tl.int64)
        rk, rv, rc = tl.arange(0, BK), pid_v * BV + tl.arange(0, BV), tl.arange(0, CHUNK)
        k_ok, v_ok = rk < d_k, rv < d_v
        state_ok = k_ok[:, None] & v_ok[None, :]
        causal = rc[:, None] >= rc[None, :]
        strict = rc[:, None] > rc[None, :]
        q_base, k_base = q_ptr + b * stride_qb + h * stride_qh, k_ptr + b * stride_kb + h * stride_kh
        v_base, do_base = v_ptr + b * stride_vb + h * stride_vh, do_ptr + b * stride_ob + h * stride_oh
        beta_base, g_base = beta_ptr + b * stride_bb + h * stride_bh, g_ptr + b * stride_gb + h * stride_gh
        dv_base = dv_ptr + b * stride_dvb + h * stride_dvh
        part = pid_v.to(tl.int64) * tl.num_programs(1) + pid_bh  # this program's row of the partial sums
        state_offsets = rk[:, None] * d_v + rv[None, :]
        d_state = tl.zeros((BK, BV), dtype=tl.float32)
        if HAS_FINAL_GRAD:
            d_state = tl.load(dsf_ptr + b * stride_sb + h * stride_sh + rk[:, None] * stride_sk
                              + rv[None, :] * stride_sv, mask=state_ok, other=0.0).to(tl.float32)
        n_chunks = tl.cdiv(length, CHUNK)
        for i in range(n_chunks):
            chunk = n_chunks - 1 - i
            t = chunk * CHUNK + rc
            t_ok = t < length
            q, k, v, beta, cum, last = _load_chunk(q_base, k_base, v_base, beta_base, g_base, t, rk, rv, length,
                                                   d_k, d_v, stride_ql, stride_qd, stride_kl, stride_kd, stride_vl,
                                                   stride_vd, stride_bl, stride_gl, GATED, CHUNK)
            do = tl.load(do_base + t[:, None] * stride_ol + rv[None, :] * stride_od,
                         mask=t_ok[:, None] & v_ok[None, :], other=0.0).to(tl.float32)
            state = tl.load(starts_ptr + (pid_bh.to(tl.int64) * n_chunks + chunk) * d_k * d_v + state_offsets,
                            mask=state_ok, other=0.0)
            # the forward, recomputed
            gap = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))
            gamma = tl.exp(cum)
            to_end = tl.exp(last - cum)
            kk = tl.dot(k, tl.trans(k), input_precision=PRECISION)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            inner = tl.where(strict, kk * gap, 0.0)
            inverse = _unit_lower_inverse(inner * beta[:, None], CHUNK)
            read = tl.dot(k, state, input_precision=PRECISION) * gamma[:, None]
            corrections = tl.dot(inverse, beta[:, None] * (v - read), input_precision=PRECISION)
            # gradients: corrections U, then the right-hand side R = beta (v - read) through (I + A)^(-T)
            d_u = tl.dot(tl.trans(qk * gap), do, input_precision=PRECISION)
            d_u += tl.dot(k * to_end[:, None], d_state, input_precision=PRECISION)
            d_r = tl.dot(tl.trans(inverse), d_u, input_precision=PRECISION)
            tl.store(dv_base + t[:, None] * stride_dvl + rv[None, :] * stride_dvd,
                     (beta[:, None] * d_r).to(dv_ptr.dtype.element_ty), mask=t_ok[:, None] & v_ok[None, :])
            d_a = tl.where(strict, -tl.dot(d_r, tl.trans(corrections), input_precision=PRECISION), 0.0)
            d_beta = tl.sum(d_r * (v - read), axis=1) + tl.sum(d_a * inner, axis=1)
            d_inner = d_a * beta[:, None] * gap  # through A_ij = beta_i (k_i . k_j) Gamma_ij
            d_scores = tl.where(causal, tl.dot(do, tl.trans(corrections), input_precision=PRECISION), 0.0)
            d_qk = d_scores * gap
            d_q = tl.dot(do, tl.trans(state), input_precision=PRECISION) * gamma[:, None]
            d_q += tl.dot(d_qk, k, input_precision=PRECISION)
            d_read = beta[:, None] * d_r  # minus the gradient of read
            ds_read = tl.dot(d_read, tl.trans(state), input_precision=PRECISION)
            u_ds = tl.dot(corrections, tl.trans(d_state), input_precision=PRECISION)
            grad_k = tl.dot(tl.trans(d_qk), q, input_precision=PRECISION)
            grad_k += (tl.dot(d_inner, k, input_precision=PRECISION)
                       + tl.dot(tl.trans(d_inner), k, input_precision=PRECISION))
            grad_k += u_ds * to_end[:, None] - ds_read * gamma[:, None]
            if GATED:  # the running sum b: through Gamma, exp(b), exp(b_C - b) and exp(b_C) S
                d_gap = d_qk * qk + d_inner * kk
                d_cum = tl.sum(d_gap, axis=1) - tl.sum(d_gap, axis=0)
                d_cum += gamma * tl.sum(do * tl.dot(q, state, input_precision=PRECISION), axis=1)
                d_cum -= tl.sum(d_read * read, axis=1)
                d_end = to_end * tl.sum(k * u_ds, axis=1)
                d_last = tl.sum(d_end, axis=0) + tl.exp(last) * tl.sum(tl.sum(d_state * state, axis=1), axis=0)
                d_cum += tl.where(rc == CHUNK - 1, d_last, 0.0) - d_end
                d_g = tl.sum(d_cum, axis=0) - tl.cumsum(d_cum, axis=0) + d_cum  # sum over t' >= t in the chunk
                tl.store(dg_ptr + part * length + t, d_g, mask=t_ok)
            d_state = d_state * tl.exp(last) + tl.dot(tl.trans(q * gamma[:, None]), do, input_precision=PRECISION)
            d_state -= tl.dot(tl.trans(k * gamma[:, None]), d_read, input_precision=PRECISION)
            qk_ok = t_ok[:, None] & k_ok[None, :]
            tl.store(dq_ptr + (part * length + t[:, None]) * d_k + rk[None, :], d_q, mask=qk_ok)
            tl.store(dk_ptr + (part * length + t[:, None]) * d_k + rk[None, :], grad_k, mask=qk_ok)
            tl.store(dbeta_ptr + part * length + t, d_beta, mask=t_ok)
        tl.store(ds0_ptr + pid_bh.to(tl.int64) * d_k * d_v + state_offsets, d_state, mask=state_ok)
