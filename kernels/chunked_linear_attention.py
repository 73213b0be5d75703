"""Chunked causal linear attention with an optional per-step decay: Triton forward and backward kernels.

One op serves linear attention (Katharopoulos et al., "Transformers are RNNs", 2020), RetNet
(Sun et al., "Retentive Network", 2023: a fixed scalar decay per head) and GLA (Yang et al.,
"Gated Linear Attention Transformers with Hardware-Efficient Training", 2024: a
data-dependent decay per key channel).  Per head, with ``g_t`` the log-decay at step ``t``,

    ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``,   ``o_t = S_t^T q_t``

(``S`` is a ``d_k x d_v`` state; no decay means ``g = 0``).  The chunked form (GLA's
"chunkwise parallel" form) never builds the ``L x L`` matrix: within a chunk of ``C`` tokens
the outputs are a masked ``C x C`` product, across chunks the state carries the past.
Log-decays are combined as differences of in-chunk cumulative sums masked *before* the
exponential, so every factor is ``<= 1`` and nothing overflows however strong the decay.

Shapes: ``q, k: (batch, heads, length, d_k)``, ``v: (batch, heads, length, d_v)``,
``log_decay``: None, ``(batch, heads, length)`` (one per head, RetNet) or
``(batch, heads, length, d_k)`` (per key channel, GLA); states ``(batch, heads, d_k, d_v)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import device_guard, select, triton_available
from .tensor_checks import check_dtype, check_like, dot_precision, dtype_names, shape_error

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_TRITON_KEY_DIM = 128  # the whole key dimension sits in one tile (the state is BK x BV)
DTYPES = (*TRITON_DTYPES, torch.float64)
DEFAULT_CHUNK = 64


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype states are kept in: float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def linear_attention_step(q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor,
                          log_decay_t: torch.Tensor | None, state: torch.Tensor,
                          inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence: ``q_t, k_t: (batch, heads, d_k)``, ``v_t: (batch, heads, d_v)``,
    ``log_decay_t``: None, ``(batch, heads)`` or ``(batch, heads, d_k)``; ``state: (batch, heads, d_k, d_v)``.
    Returns ``(o_t: (batch, heads, d_v), new_state)``, the state in :func:`state_dtype`; ``inplace``
    updates ``state`` itself (no autograd through it) instead of making a new one."""
    work = state.dtype
    if log_decay_t is not None:
        decay = log_decay_t.to(work).exp()
        decay = decay.unsqueeze(-1) if decay.dim() == 3 else decay[..., None, None]
        state = state.mul_(decay) if inplace else state * decay
    keys, values = k_t.to(work).unsqueeze(-1), v_t.to(work).unsqueeze(-2)
    state = state.addcmul_(keys, values) if inplace else state + keys * values
    o_t = (q_t.to(work).unsqueeze(-2) @ state).squeeze(-2)  # a batched product (einsum costs more per token)
    return o_t.to(v_t.dtype), state


def linear_attention_recurrence(q, k, v, log_decay=None, initial_state=None):
    """The token-by-token recurrence (the definition, for tests and benchmarks): same arguments and
    result as :func:`chunked_linear_attention`."""
    batch, heads, length, d_k = q.shape
    state = _initial(initial_state, batch, heads, d_k, v.shape[-1], v)
    outputs = []
    for t in range(length):
        g_t = None if log_decay is None else log_decay[:, :, t]
        o_t, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], g_t, state)
        outputs.append(o_t)
    out = torch.stack(outputs, 2) if outputs else v.new_zeros(batch, heads, 0, v.shape[-1])
    return out, state


def _initial(initial_state, batch, heads, d_k, d_v, like) -> torch.Tensor:
    work = state_dtype(like.dtype)
    if initial_state is None:
        return torch.zeros(batch, heads, d_k, d_v, device=like.device, dtype=work)
    return initial_state.to(work)


SUB_CHUNK = 16  # the exact per-channel form's in-chunk blocks (see _exact_within_chunks)


def effective_chunk(length: int, chunk_size: int) -> int:
    """The chunk the twin uses for ``length`` tokens: ``chunk_size``, or the power of two (at least 16)
    that holds a shorter sequence, so a short one is padded by less than a chunk."""
    return min(chunk_size, max(16, 1 << max(0, length - 1).bit_length()))


def twin_matmul_flops(length: int, heads: int, d_k: int, d_v: int, chunk_size: int) -> int:
    """Matrix-product FLOPs of the twin for one sequence (padded to whole chunks), as FlopCounterMode counts
    them: in-chunk scores and their values (``2 C (d_k + d_v)`` a token), the state read and the state
    update (``4 d_k d_v``).  That is the factored form, taken whenever the decay allows it (see
    :func:`factorable`); the exact blocked form of a very strong per-channel decay computes
    ``(C + 16) (d_k + d_v)`` a token in its products instead."""
    chunk = effective_chunk(length, chunk_size)
    tokens = -(-length // chunk) * chunk
    return tokens * heads * (2 * chunk * (d_k + d_v) + 4 * d_k * d_v)


# The largest in-chunk decay (minus the log) the factored form takes: exp(+-limit) stays a normal number
# with room to spare in the work dtype, so the factored products lose nothing to overflow or underflow.
FACTOR_LIMIT = {torch.float32: 40.0, torch.float64: 300.0}


def factorable(cum: torch.Tensor) -> bool:
    """Whether the in-chunk decays ``cum: (..., C, 1 or d_k)`` (running sums of log-decays, ``<= 0`` and falling)
    are mild enough for the factored form: ``exp(-b_s)`` of every chunk stays below ``exp(limit)``."""
    return bool(-cum[..., -1, :].min() <= FACTOR_LIMIT[cum.dtype])


def _masked_chunk_products(q, k, v) -> torch.Tensor:
    """``(q k^T masked causal) v`` within every chunk: ``q, k: (..., C, d_k)``, ``v: (..., C, d_v)``."""
    size = q.shape[-2]
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    return (q @ k.transpose(-1, -2)).masked_fill_(~causal, 0) @ v  # the scores are a fresh tensor


def _exact_within_chunks(q, k, v, cum) -> torch.Tensor:
    """The in-chunk part of the output under a decay too strong to factor (see :func:`factorable`), with
    every factor ``<= 1``: ``q, k, v: (batch, heads, chunks, C, d)``, ``cum: (..., C, 1)`` (per head) or
    ``(..., C, d_k)`` (per channel), the in-chunk running sums of the log-decay.
    A per-head decay is the masked ``C x C`` matrix of ``exp(b_t - b_s)``.  A per-channel one sits
    between q and k, so a pair of positions costs ``d_k`` exponentials: the diagonal blocks of 16 take
    that ``(16, 16, d_k)`` product, and each block's queries meet the earlier keys of their chunk through
    one matrix product, scaled about the position ``r`` just before the block (``exp(b_t - b_r)`` and
    ``exp(b_r - b_s)`` are both ``<= 1``, as ``b`` never increases)."""
    size = q.shape[-2]
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    if cum.shape[-1] == 1:
        b = cum[..., 0]
        gap = (b.unsqueeze(-1) - b.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
        return ((q @ k.transpose(-1, -2)) * gap.exp()) @ v
    block = min(SUB_CHUNK, size)
    diagonal = causal[:block, :block, None]
    outputs = []
    for start in range(0, size, block):
        rows = slice(start, start + block)
        q_i, k_i, b_i = q[..., rows, :], k[..., rows, :], cum[..., rows, :]
        gap = (b_i.unsqueeze(-2) - b_i.unsqueeze(-3)).masked_fill(~diagonal, float("-inf"))
        out = torch.einsum("...td,...sd,...tsd->...ts", q_i, k_i, gap.exp()) @ v[..., rows, :]
        if start:
            ref = cum[..., start - 1: start, :]
            scaled_k = k[..., :start, :] * (ref - cum[..., :start, :]).exp()
            out = out + ((q_i * (b_i - ref).exp()) @ scaled_k.transpose(-1, -2)) @ v[..., :start, :]
        outputs.append(out)
    return torch.cat(outputs, -2)


def chunked_linear_attention_reference(q, k, v, log_decay=None, initial_state=None, chunk_size=DEFAULT_CHUNK):
    """The PyTorch twin of :func:`chunked_linear_attention` (the CPU path): the chunked form in the
    state dtype (float32, float64 for float64 inputs); the decays folded into queries and keys for all
    chunks at once, then a loop over chunks: each chunk's masked in-chunk product, its read of the state
    entering it, and its update of that state."""
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    work = state_dtype(v.dtype)
    state = _initial(initial_state, batch, heads, d_k, d_v, v)
    if length == 0 or batch * heads == 0:
        return v.new_zeros(batch, heads, length, d_v), state
    chunk_size = effective_chunk(length, chunk_size)
    pad = -length % chunk_size
    n_chunks = (length + pad) // chunk_size

    def chunked(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t.to(work), (0, 0, 0, pad)) if pad else t.to(work)  # no copy of a whole-chunk input
        return t.reshape(batch, heads, n_chunks, chunk_size, t.shape[-1])

    qc, kc, vc = chunked(q), chunked(k), chunked(v)
    intra, chunk_decay = None, None  # in-chunk outputs computed ahead (the exact form), per-chunk state decays
    if log_decay is not None:
        # In-chunk running sums of the log-decay, (batch, heads, chunks, C, 1 or d_k); padding has g = 0.
        cum = chunked(log_decay.unsqueeze(-1) if log_decay.dim() == 3 else log_decay).cumsum(3)
        last = cum[..., -1:, :]  # (batch, heads, chunks, 1, 1 or d_k)
        if factorable(cum):
            # exp(b_t - b_s) = exp(b_t) exp(-b_s): into the queries and keys, one masked product per chunk;
            # the same scaled queries read the state, and the keys scaled to the chunk's end update it.
            qc, kc = qc * cum.exp(), kc * (-cum).exp()
            update_keys = kc * last.exp()
        else:
            intra = _exact_within_chunks(qc, kc, vc, cum).unbind(2)
            qc, update_keys = qc * cum.exp(), kc * (last - cum).exp()
        chunk_decay = last.transpose(-1, -2).exp().unbind(2)  # each (batch, heads, 1 or d_k, 1)
    else:
        update_keys = kc
    # One chunk at a time: its (batch, heads, C, C) scores and the state stay in a CPU's cache, where all
    # chunks at once stream tensors of the input's size times C / d through memory (1.5x slower forward).
    # unbind, not indexing: the backward of x[:, :, i] would write a full-size zero gradient per chunk.
    outputs = []
    for i, (q_i, k_i, v_i, u_i) in enumerate(zip(qc.unbind(2), kc.unbind(2), vc.unbind(2), update_keys.unbind(2))):
        in_chunk = _masked_chunk_products(q_i, k_i, v_i) if intra is None else intra[i]
        outputs.append(in_chunk + q_i @ state)
        state = (state if chunk_decay is None else state * chunk_decay[i]) + u_i.transpose(-1, -2) @ v_i
    out = torch.stack(outputs, 2)
    return out.reshape(batch, heads, n_chunks * chunk_size, d_v)[:, :, :length].to(v.dtype), state


def chunked_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor | None = None,
                             initial_state: torch.Tensor | None = None, *, chunk_size: int = DEFAULT_CHUNK
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal linear attention ``o_t = S_t^T q_t``, ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, chunked.

    Args:
        q, k: ``(batch, heads, length, d_k)``; float16, bfloat16, float32 or float64, any strides.
        v: ``(batch, heads, length, d_v)``, same dtype and device.
        log_decay: None (no decay), ``(batch, heads, length)`` or ``(batch, heads, length, d_k)``;
            values ``<= 0`` (a log of a decay in ``(0, 1]``).
        initial_state: None (zeros) or ``(batch, heads, d_k, d_v)``.
        chunk_size: tokens per chunk (a power of two, at least 16).

    Returns:
        ``(o: (batch, heads, length, d_v) in v's dtype, final_state: (batch, heads, d_k, d_v))``,
        the state in float32 (float64 for float64 inputs).  A zero length returns an empty ``o``
        and the initial state.

    Backends (:mod:`seqarch.kernels.backend`): the Triton kernels (float32 accumulation; a fixed
    chunk of 16 tokens, whatever ``chunk_size`` says) take float16, bfloat16 and float32 with
    ``d_k <= 128`` (:func:`triton_limits`); float64 and wider keys run the twin
    (:func:`chunked_linear_attention_reference`, which uses ``chunk_size``).  Gradients flow to
    ``q, k, v, log_decay`` and ``initial_state`` on both.
    """
    _check_inputs(q, k, v, log_decay, initial_state, chunk_size)
    if q.numel() and v.numel() and select("chunked_linear_attention", q, triton_limits(q, k, v, log_decay)) == "triton":
        return ChunkedLinearAttentionFunction.apply(q, k, v, log_decay, initial_state)
    return chunked_linear_attention_reference(q, k, v, log_decay, initial_state, chunk_size)


def triton_limits(q, k, v, log_decay=None, initial_state=None, *, chunk_size=DEFAULT_CHUNK) -> str | None:
    """Why the Triton path cannot take this call, or None when it can."""
    if q.dtype not in TRITON_DTYPES:
        return f"q: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {q.dtype}"
    if q.shape[-1] > MAX_TRITON_KEY_DIM:
        return f"q: expected d_k <= {MAX_TRITON_KEY_DIM} for the Triton path, got {q.shape[-1]}"
    return None


def _check_inputs(q, k, v, log_decay, initial_state, chunk_size) -> None:
    """Raise a ValueError naming the first bad argument."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise shape_error("q", "rank 4 (batch, heads, length, d_k)", q)
    check_dtype("q", q, DTYPES)
    batch, heads, length, d_k = q.shape
    if not isinstance(k, torch.Tensor) or k.shape != q.shape:
        raise shape_error("k", f"shape {tuple(q.shape)} (that of q)", k)
    if not isinstance(v, torch.Tensor) or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise shape_error("v", f"shape ({batch}, {heads}, {length}, d_v)", v)
    if log_decay is not None and (not isinstance(log_decay, torch.Tensor)
                                  or log_decay.shape not in (q.shape[:3], q.shape)):
        raise shape_error("log_decay", f"None, shape {tuple(q.shape[:3])} or {tuple(q.shape)}", log_decay)
    if initial_state is not None and (not isinstance(initial_state, torch.Tensor)
                                      or initial_state.shape != (batch, heads, d_k, v.shape[-1])):
        raise shape_error("initial_state", f"None or shape {(batch, heads, d_k, v.shape[-1])}", initial_state)
    if (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 16
            or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size: expected a power of two >= 16, got {chunk_size!r}")
    check_like("q", q, {"k": k, "v": v, "log_decay": log_decay})
    check_like("q", q, {"initial_state": initial_state}, dtype=False)


# -- the Triton path ----------------------------------------------------------------------------
TRITON_CHUNK = 16


def _decay_kind(log_decay: torch.Tensor | None) -> int:
    """0: no decay, 1: one per head, 2: one per key channel (a constexpr of the kernels)."""
    return 0 if log_decay is None else (1 if log_decay.dim() == 3 else 2)


def _decay_strides(log_decay: torch.Tensor | None) -> tuple[int, int, int, int]:
    if log_decay is None:
        return (0, 0, 0, 0)
    return (*log_decay.stride()[:3], log_decay.stride(3) if log_decay.dim() == 4 else 0)


def _tiles(q: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int]:
    """``(BK, BV, number of value blocks)``: all keys in one tile, values split in blocks of at most 64."""
    block_k = max(16, triton.next_power_of_2(q.shape[-1]))
    block_v = max(16, min(64, triton.next_power_of_2(v.shape[-1])))
    return block_k, block_v, triton.cdiv(v.shape[-1], block_v)


def _forward(q, k, v, log_decay, initial_state):
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    block_k, block_v, n_v = _tiles(q, v)
    out = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    final = torch.empty(batch, heads, d_k, d_v, device=v.device, dtype=torch.float32)
    s0 = final if initial_state is None else initial_state
    _forward_kernel[(n_v, batch * heads)](
        q, k, v, q if log_decay is None else log_decay, s0, out, final,
        *q.stride(), *k.stride(), *v.stride(), *_decay_strides(log_decay), *s0.stride(), *out.stride(),
        heads, length, d_k, d_v,
        DECAY=_decay_kind(log_decay), HAS_INITIAL=initial_state is not None, CHUNK=TRITON_CHUNK,
        BK=block_k, BV=block_v, PRECISION=dot_precision(q.dtype), num_warps=4,
    )
    return out, final


def _backward(q, k, v, log_decay, initial_state, grad_out, grad_final):
    """Returns ``(dq, dk, dv, d_initial)`` (the first two in float32, summed over value blocks)."""
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    block_k, block_v, n_v = _tiles(q, v)
    dq_part = torch.empty(n_v, batch, heads, length, d_k, device=q.device, dtype=torch.float32)
    dk_part = torch.empty_like(dq_part)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    d_initial = torch.empty(batch, heads, d_k, d_v, device=v.device, dtype=torch.float32)
    s0 = d_initial if initial_state is None else initial_state
    g = q if log_decay is None else log_decay
    dsf = d_initial if grad_final is None else grad_final
    common = {"DECAY": _decay_kind(log_decay), "CHUNK": TRITON_CHUNK, "BK": block_k, "BV": block_v,
              "PRECISION": dot_precision(q.dtype), "num_warps": 4}
    _dq_kernel[(n_v, batch * heads)](
        q, k, v, g, s0, grad_out, dq_part,
        *q.stride(), *k.stride(), *v.stride(), *_decay_strides(log_decay), *s0.stride(), *grad_out.stride(),
        heads, length, d_k, d_v, HAS_INITIAL=initial_state is not None, **common,
    )
    _dkdv_kernel[(n_v, batch * heads)](
        q, k, v, g, dsf, grad_out, dk_part, dv, d_initial,
        *q.stride(), *k.stride(), *v.stride(), *_decay_strides(log_decay), *dsf.stride(), *grad_out.stride(),
        *dv.stride(), heads, length, d_k, d_v, HAS_FINAL_GRAD=grad_final is not None, **common,
    )
    return dq_part.sum(0), dk_part.sum(0), dv, d_initial


def _decay_gradient(q, k, dq, dk, log_decay, final, grad_final):
    """The log-decay's gradient from the others': with ``B_t`` the running sum of ``g``, the op reads
    ``q_t exp(B_t)``, ``k_s exp(-B_s)`` and (in the final state) ``exp(B_L)``, so
    ``dL/dB_t = q_t dq_t - k_t dk_t`` (plus the final state's term at ``t = L - 1``) and ``dg_t`` is its
    sum over ``t' >= t``."""
    dg = (q.float() * dq - k.float() * dk).flip(2).cumsum(2).flip(2)
    if grad_final is not None:  # the term at t = L - 1 reaches every g_t
        dg = dg + (grad_final.float() * final).sum(-1).unsqueeze(2)
    return (dg.sum(-1) if log_decay.dim() == 3 else dg).to(log_decay.dtype)


class ChunkedLinearAttentionFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: ``apply(q, k, v, log_decay, initial_state) -> (o, final_state)``,
    inputs checked by :func:`chunked_linear_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, log_decay, initial_state):
        with device_guard(q):
            out, final = _forward(q, k, v, log_decay, initial_state)
        ctx.save_for_backward(q, k, v, log_decay, initial_state, final)
        return out, final

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        q, k, v, log_decay, initial_state, final = ctx.saved_tensors
        with device_guard(q):
            dq, dk, dv, d_initial = _backward(q, k, v, log_decay, initial_state, grad_out, grad_final)
        dg = None if log_decay is None else _decay_gradient(q, k, dq, dk, log_decay, final, grad_final)
        d_initial = None if initial_state is None else d_initial.to(initial_state.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg, d_initial


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _chunk_decay(g_ptr, t, t_ok, rk, k_ok, stride_gl, stride_gd, DECAY: tl.constexpr, CHUNK: tl.constexpr):
        """In-chunk running sums of the log-decay and their last value: per head ``(C,)`` and ``()``
        (DECAY 1) or per key channel ``(C, BK)`` and ``(BK,)`` (DECAY 2)."""
        rc = tl.arange(0, CHUNK)
        if DECAY == 1:
            cum = tl.cumsum(tl.load(g_ptr + t * stride_gl, mask=t_ok, other=0.0).to(tl.float32), axis=0)
            last = tl.sum(tl.where(rc == CHUNK - 1, cum, 0.0), axis=0)
        else:
            g = tl.load(g_ptr + t[:, None] * stride_gl + rk[None, :] * stride_gd,
                        mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            cum = tl.cumsum(g, axis=0)
            last = tl.sum(tl.where((rc == CHUNK - 1)[:, None], cum, 0.0), axis=0)
        return cum, last

    @triton.jit
    def _forward_kernel(
        q_ptr, k_ptr, v_ptr, g_ptr, s0_ptr, o_ptr, sf_ptr,
        stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd, stride_gb, stride_gh, stride_gl, stride_gd,
        stride_sb, stride_sh, stride_sk, stride_sv, stride_ob, stride_oh, stride_ol, stride_od,
        heads, length, d_k, d_v,
        DECAY: tl.constexpr, HAS_INITIAL: tl.constexpr, CHUNK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_v, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = (pid_bh // heads).to(tl.int64), (pid_bh % heads).to(tl.int64)
        rk, rv, rc = tl.arange(0, BK), pid_v * BV + tl.arange(0, BV), tl.arange(0, CHUNK)
        k_ok, v_ok = rk < d_k, rv < d_v
        causal = rc[:, None] >= rc[None, :]
        q_base, k_base = q_ptr + b * stride_qb + h * stride_qh, k_ptr + b * stride_kb + h * stride_kh
        v_base, o_base = v_ptr + b * stride_vb + h * stride_vh, o_ptr + b * stride_ob + h * stride_oh
        g_base = g_ptr + b * stride_gb + h * stride_gh
        state_ok = k_ok[:, None] & v_ok[None, :]
        state = tl.zeros((BK, BV), dtype=tl.float32)
        if HAS_INITIAL:
            state = tl.load(s0_ptr + b * stride_sb + h * stride_sh + rk[:, None] * stride_sk + rv[None, :] * stride_sv,
                            mask=state_ok, other=0.0).to(tl.float32)
        for start in range(0, length, CHUNK):
            t = start + rc
            t_ok = t < length
            qk_ok = t_ok[:, None] & k_ok[None, :]
            q = tl.load(q_base + t[:, None] * stride_ql + rk[None, :] * stride_qd, mask=qk_ok, other=0.0).to(tl.float32)
            k = tl.load(k_base + t[:, None] * stride_kl + rk[None, :] * stride_kd, mask=qk_ok, other=0.0).to(tl.float32)
            v = tl.load(v_base + t[:, None] * stride_vl + rv[None, :] * stride_vd,
                        mask=t_ok[:, None] & v_ok[None, :], other=0.0).to(tl.float32)
            if DECAY == 0:
                scores = tl.where(causal, tl.dot(q, tl.trans(k), input_precision=PRECISION), 0.0)
                out = tl.dot(q, state, input_precision=PRECISION)
                state += tl.dot(tl.trans(k), v, input_precision=PRECISION)
            elif DECAY == 1:
                cum, last = _chunk_decay(g_base, t, t_ok, rk, k_ok, stride_gl, stride_gd, DECAY, CHUNK)
                gap = tl.where(causal, cum[:, None] - cum[None, :], float("-inf"))
                scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * tl.exp(gap)
                out = tl.dot(q * tl.exp(cum)[:, None], state, input_precision=PRECISION)
                k_end = k * tl.exp(last - cum)[:, None]
                state = state * tl.exp(last) + tl.dot(tl.trans(k_end), v, input_precision=PRECISION)
            else:
                cum, last = _chunk_decay(g_base, t, t_ok, rk, k_ok, stride_gl, stride_gd, DECAY, CHUNK)
                gap = tl.where(causal[:, :, None], cum[:, None, :] - cum[None, :, :], float("-inf"))
                scores = tl.sum(q[:, None, :] * k[None, :, :] * tl.exp(gap), axis=2)
                out = tl.dot(q * tl.exp(cum), state, input_precision=PRECISION)
                k_end = k * tl.exp(last[None, :] - cum)
                state = state * tl.exp(last)[:, None] + tl.dot(tl.trans(k_end), v, input_precision=PRECISION)
            out += tl.dot(scores, v, input_precision=PRECISION)
            tl.store(o_base + t[:, None] * stride_ol + rv[None, :] * stride_od, out.to(o_ptr.dtype.element_ty),
                     mask=t_ok[:, None] & v_ok[None, :])
        sf = sf_ptr + pid_bh.to(tl.int64) * d_k * d_v + rk[:, None] * d_v + rv[None, :]
        tl.store(sf, state, mask=state_ok)

    @triton.jit
    def _dq_kernel(
        q_ptr, k_ptr, v_ptr, g_ptr, s0_ptr, do_ptr, dq_ptr,
        stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd, stride_gb, stride_gh, stride_gl, stride_gd,
        stride_sb, stride_sh, stride_sk, stride_sv, stride_ob, stride_oh, stride_ol, stride_od,
        heads, length, d_k, d_v,
        DECAY: tl.constexpr, HAS_INITIAL: tl.constexpr, CHUNK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """``dq`` (this value block's part), forward in time, recomputing the state."""
        pid_v, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = (pid_bh // heads).to(tl.int64), (pid_bh % heads).to(tl.int64)
        rk, rv, rc = tl.arange(0, BK), pid_v * BV + tl.arange(0, BV), tl.arange(0, CHUNK)
        k_ok, v_ok = rk < d_k, rv < d_v
        causal = rc[:, None] >= rc[None, :]
        k_base = k_ptr + b * stride_kb + h * stride_kh
        v_base, do_base = v_ptr + b * stride_vb + h * stride_vh, do_ptr + b * stride_ob + h * stride_oh
        g_base = g_ptr + b * stride_gb + h * stride_gh
        dq_base = dq_ptr + (pid_v.to(tl.int64) * tl.num_programs(1) + pid_bh) * length * d_k
        state = tl.zeros((BK, BV), dtype=tl.float32)
        if HAS_INITIAL:
            state = tl.load(s0_ptr + b * stride_sb + h * stride_sh + rk[:, None] * stride_sk + rv[None, :] * stride_sv,
                            mask=k_ok[:, None] & v_ok[None, :], other=0.0).to(tl.float32)
        for start in range(0, length, CHUNK):
            t = start + rc
            t_ok = t < length
            qk_ok = t_ok[:, None] & k_ok[None, :]
            tv_ok = t_ok[:, None] & v_ok[None, :]
            k = tl.load(k_base + t[:, None] * stride_kl + rk[None, :] * stride_kd, mask=qk_ok, other=0.0).to(tl.float32)
            v = tl.load(v_base + t[:, None] * stride_vl + rv[None, :] * stride_vd, mask=tv_ok, other=0.0).to(tl.float32)
            do = tl.load(do_base + t[:, None] * stride_ol + rv[None, :] * stride_od, mask=tv_ok,
                         other=0.0).to(tl.float32)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (C, C): do_t . v_s
            inter = tl.dot(do, tl.trans(state), input_precision=PRECISION)  # (C, BK)
            if DECAY == 0:
                dq = inter + tl.dot(tl.where(causal, dp, 0.0), k, input_precision=PRECISION)
                state += tl.dot(tl.trans(k), v, input_precision=PRECISION)
            elif DECAY == 1:
                cum, last = _chunk_decay(g_base, t, t_ok, rk, k_ok, stride_gl, stride_gd, DECAY, CHUNK)
                gap = tl.where(causal, cum[:, None] - cum[None, :], float("-inf"))
                dq = inter * tl.exp(cum)[:, None] + tl.dot(dp * tl.exp(gap), k, input_precision=PRECISION)
                k_end = k * tl.exp(last - cum)[:, None]
                state = state * tl.exp(last) + tl.dot(tl.trans(k_end), v, input_precision=PRECISION)
            else:
                cum, last = _chunk_decay(g_base, t, t_ok, rk, k_ok, stride_gl, stride_gd, DECAY, CHUNK)
                gap = tl.where(causal[:, :, None], cum[:, None, :] - cum[None, :, :], float("-inf"))
                dq = inter * tl.exp(cum) + tl.sum(dp[:, :, None] * k[None, :, :] * tl.exp(gap), axis=1)
                k_end = k * tl.exp(last[None, :] - cum)
                state = state * tl.exp(last)[:, None] + tl.dot(tl.trans(k_end), v, input_precision=PRECISION)
            tl.store(dq_base + t[:, None] * d_k + rk[None, :], dq, mask=qk_ok)

    @triton.jit
    def _dkdv_kernel(
        q_ptr, k_ptr, v_ptr, g_ptr, dsf_ptr, do_ptr, dk_ptr, dv_ptr, ds0_ptr,
        stride_qb, stride_qh, stride_ql, stride_qd, stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd, stride_gb, stride_gh, stride_gl, stride_gd,
        stride_sb, stride_sh, stride_sk, stride_sv, stride_ob, stride_oh, stride_ol, stride_od,
        stride_dvb, stride_dvh, stride_dvl, stride_dvd,
        heads, length, d_k, d_v,
        DECAY: tl.constexpr, HAS_FINAL_GRAD: tl.constexpr, CHUNK: tl.constexpr, BK: tl.constexpr,
        BV: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """``dk`` (this value block's part), ``dv`` and the initial state's gradient, backward in time
        with the state's gradient ``dH`` carried from the chunks after."""
        pid_v, pid_bh = tl.program_id(0), tl.program_id(1)
        b, h = (pid_bh // heads).to(tl.int64), (pid_bh % heads).to(tl.int64)
        rk, rv, rc = tl.arange(0, BK), pid_v * BV + tl.arange(0, BV), tl.arange(0, CHUNK)
        k_ok, v_ok = rk < d_k, rv < d_v
        state_ok = k_ok[:, None] & v_ok[None, :]
        causal = rc[:, None] >= rc[None, :]
        q_base, k_base = q_ptr + b * stride_qb + h * stride_qh, k_ptr + b * stride_kb + h * stride_kh
        v_base, do_base = v_ptr + b * stride_vb + h * stride_vh, do_ptr + b * stride_ob + h * stride_oh
        dv_base = dv_ptr + b * stride_dvb + h * stride_dvh
        g_base = g_ptr + b * stride_gb + h * stride_gh
        dk_base = dk_ptr + (pid_v.to(tl.int64) * tl.num_programs(1) + pid_bh) * length * d_k
        d_state = tl.zeros((BK, BV), dtype=tl.float32)
        if HAS_FINAL_GRAD:
            d_state = tl.load(dsf_ptr + b * stride_sb + h * stride_sh + rk[:, None] * stride_sk
                              + rv[None, :] * stride_sv, mask=state_ok, other=0.0).to(tl.float32)
        n_chunks = tl.cdiv(length, CHUNK)
        for i in range(n_chunks):
            t = (n_chunks - 1 - i) * CHUNK + rc
            t_ok = t < length
            qk_ok = t_ok[:, None] & k_ok[None, :]
            tv_ok = t_ok[:, None] & v_ok[None, :]
            q = tl.load(q_base + t[:, None] * stride_ql + rk[None, :] * stride_qd, mask=qk_ok, other=0.0).to(tl.float32)
            k = tl.load(k_base + t[:, None] * stride_kl + rk[None, :] * stride_kd, mask=qk_ok, other=0.0).to(tl.float32)
            v = tl.load(v_base + t[:, None] * stride_vl + rv[None, :] * stride_vd, mask=tv_ok, other=0.0).to(tl.float32)
            do = tl.load(do_base + t[:, None] * stride_ol + rv[None, :] * stride_od, mask=tv_ok,
                         other=0.0).to(tl.float32)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (C, C): do_t . v_s
            if DECAY == 0:
                scores = tl.where(causal, tl.dot(q, tl.trans(k), input_precision=PRECISION), 0.0)
                k_end = k
                dk = tl.dot(tl.trans(tl.where(causal, dp, 0.0)), q, input_precision=PRECISION)
                dk += tl.dot(v, tl.trans(d_state), input_precision=PRECISION)
                q_start = q
            elif DECAY == 1:
                cum, last = _chunk_decay(g_base, t, t_ok, rk, k_ok, stride_gl, stride_gd, DECAY, CHUNK)
                decay = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))
                scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * decay
                to_end = tl.exp(last - cum)[:, None]
                k_end = k * to_end
                dk = tl.dot(tl.trans(dp * decay), q, input_precision=PRECISION)
                dk += tl.dot(v, tl.trans(d_state), input_precision=PRECISION) * to_end
                q_start = q * tl.exp(cum)[:, None]
            else:
                cum, last = _chunk_decay(g_base, t, t_ok, rk, k_ok, stride_gl, stride_gd, DECAY, CHUNK)
                decay = tl.exp(tl.where(causal[:, :, None], cum[:, None, :] - cum[None, :, :], float("-inf")))
                scores = tl.sum(q[:, None, :] * k[None, :, :] * decay, axis=2)
                to_end = tl.exp(last[None, :] - cum)
                k_end = k * to_end
                dk = tl.sum(dp[:, :, None] * q[:, None, :] * decay, axis=0)
                dk += tl.dot(v, tl.trans(d_state), input_precision=PRECISION) * to_end
                q_start = q * tl.exp(cum)
            dv = tl.dot(tl.trans(scores), do, input_precision=PRECISION)
            dv += tl.dot(k_end, d_state, input_precision=PRECISION)
            if DECAY == 1:
                d_state = d_state * tl.exp(last)
            elif DECAY == 2:
                d_state = d_state * tl.exp(last)[:, None]
            d_state += tl.dot(tl.trans(q_start), do, input_precision=PRECISION)
            tl.store(dk_base + t[:, None] * d_k + rk[None, :], dk, mask=qk_ok)
            tl.store(dv_base + t[:, None] * stride_dvl + rv[None, :] * stride_dvd, dv.to(dv_ptr.dtype.element_ty),
                     mask=tv_ok)
        ds0 = ds0_ptr + pid_bh.to(tl.int64) * d_k * d_v + rk[:, None] * d_v + rv[None, :]
        tl.store(ds0, d_state, mask=state_ok)
