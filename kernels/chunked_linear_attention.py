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

from .tensor_checks import check_dtype, check_like, dtype_names

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPES = (*TRITON_DTYPES, torch.float64)
DEFAULT_CHUNK = 64


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype states are kept in: float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def _per_channel(log_decay: torch.Tensor | None, d_k: int) -> torch.Tensor | None:
    """``log_decay`` as ``(..., length, d_k)`` (a per-head decay is the same for every key channel)."""
    if log_decay is None or log_decay.dim() == 4:
        return log_decay
    return log_decay.unsqueeze(-1).expand(*log_decay.shape, d_k)


def linear_attention_step(q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor,
                          log_decay_t: torch.Tensor | None, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence: ``q_t, k_t: (batch, heads, d_k)``, ``v_t: (batch, heads, d_v)``,
    ``log_decay_t``: None, ``(batch, heads)`` or ``(batch, heads, d_k)``; ``state: (batch, heads, d_k, d_v)``.
    Returns ``(o_t: (batch, heads, d_v), new_state)``, the state in :func:`state_dtype`."""
    work = state.dtype
    if log_decay_t is not None:
        decay = log_decay_t.to(work).exp()
        state = state * (decay.unsqueeze(-1) if decay.dim() == 3 else decay[..., None, None])
    state = state + k_t.to(work).unsqueeze(-1) * v_t.to(work).unsqueeze(-2)
    o_t = torch.einsum("bhk,bhkv->bhv", q_t.to(work), state)
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


def chunked_linear_attention_reference(q, k, v, log_decay=None, initial_state=None, chunk_size=DEFAULT_CHUNK):
    """The PyTorch twin of :func:`chunked_linear_attention` (the CPU path): the chunked form in the
    state dtype (float32, float64 for float64 inputs), one loop step per chunk."""
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    work = state_dtype(v.dtype)
    state = _initial(initial_state, batch, heads, d_k, d_v, v)
    g = _per_channel(log_decay, d_k)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    outputs = []
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        qc, kc, vc = (t[:, :, start:end].to(work) for t in (q, k, v))
        mask = causal[: end - start, : end - start]
        if g is None:
            scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0)
            inter = qc @ state
            state = state + kc.transpose(-1, -2) @ vc
        else:
            b = g[:, :, start:end].to(work).cumsum(2)  # (batch, heads, C, d_k): decay from the chunk start
            if log_decay.dim() == 3:  # one decay per head: a C x C decay matrix
                b1 = b[..., 0]
                gap = (b1.unsqueeze(-1) - b1.unsqueeze(-2)).masked_fill(~mask, float("-inf"))
                scores = (qc @ kc.transpose(-1, -2)) * gap.exp()
            else:  # per key channel: the decay sits between q and k, so a (C, C, d_k) product
                gap = (b.unsqueeze(3) - b.unsqueeze(2)).masked_fill(~mask[..., None], float("-inf"))
                scores = torch.einsum("bhtd,bhsd,bhtsd->bhts", qc, kc, gap.exp())
            inter = (qc * b.exp()) @ state
            last = b[:, :, -1:]  # (batch, heads, 1, d_k)
            state = state * last.transpose(-1, -2).exp() + (kc * (last - b).exp()).transpose(-1, -2) @ vc
        outputs.append(inter + scores @ vc)
    out = torch.cat(outputs, 2) if outputs else v.new_zeros(batch, heads, 0, d_v, dtype=work)
    return out.to(v.dtype), state


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
    """
    _check_inputs(q, k, v, log_decay, initial_state, chunk_size)
    return chunked_linear_attention_reference(q, k, v, log_decay, initial_state, chunk_size)


def triton_limits(q, k, v, log_decay=None, initial_state=None, *, chunk_size=DEFAULT_CHUNK) -> str | None:
    """Why the Triton path cannot take this call, or None when it can."""
    if q.dtype not in TRITON_DTYPES:
        return f"q: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {q.dtype}"
    return None


def _shape_error(name: str, expected: str, tensor) -> ValueError:
    got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
    return ValueError(f"{name}: expected {expected}, got {got}")


def _check_inputs(q, k, v, log_decay, initial_state, chunk_size) -> None:
    """Raise a ValueError naming the first bad argument."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise _shape_error("q", "rank 4 (batch, heads, length, d_k)", q)
    check_dtype("q", q, DTYPES)
    batch, heads, length, d_k = q.shape
    if not isinstance(k, torch.Tensor) or k.shape != q.shape:
        raise _shape_error("k", f"shape {tuple(q.shape)} (that of q)", k)
    if not isinstance(v, torch.Tensor) or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise _shape_error("v", f"shape ({batch}, {heads}, {length}, d_v)", v)
    if log_decay is not None and (not isinstance(log_decay, torch.Tensor)
                                  or log_decay.shape not in (q.shape[:3], q.shape)):
        raise _shape_error("log_decay", f"None, shape {tuple(q.shape[:3])} or {tuple(q.shape)}", log_decay)
    if initial_state is not None and (not isinstance(initial_state, torch.Tensor)
                                      or initial_state.shape != (batch, heads, d_k, v.shape[-1])):
        raise _shape_error("initial_state", f"None or shape {(batch, heads, d_k, v.shape[-1])}", initial_state)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: expected a power of two >= 16, got {chunk_size!r}")
    check_like("q", q, {"k": k, "v": v, "log_decay": log_decay})
    check_like("q", q, {"initial_state": initial_state}, dtype=False)
