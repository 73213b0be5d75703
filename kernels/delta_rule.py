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

Only the PyTorch path exists so far: there are no Triton kernels for this op yet, so every call runs
the twin (its gradients come from autograd through it).
"""

from __future__ import annotations

import torch

from .chunked_linear_attention import state_dtype
from .tensor_checks import check_dtype, check_like

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEFAULT_CHUNK = 64


def delta_rule_step(q_t, k_t, v_t, beta_t, log_decay_t, state):
    """One token: ``q_t, k_t: (batch, heads, d_k)``, ``v_t: (batch, heads, d_v)``, ``beta_t`` and
    ``log_decay_t`` (or None): ``(batch, heads)``; ``state: (batch, heads, d_k, d_v)``.
    Returns ``(o_t: (batch, heads, d_v), new_state)``."""
    work = state.dtype
    q_t, k_t, v_t, beta_t = (t.to(work) for t in (q_t, k_t, v_t, beta_t))
    if log_decay_t is not None:
        state = state * log_decay_t.to(work).exp()[..., None, None]
    correction = beta_t.unsqueeze(-1) * (v_t - torch.einsum("bhk,bhkv->bhv", k_t, state))
    state = state + k_t.unsqueeze(-1) * correction.unsqueeze(-2)
    return torch.einsum("bhk,bhkv->bhv", q_t, state), state


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
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        size = end - start
        qc, kc, vc, bc = (t[:, :, start:end].to(work) for t in (q, k, v, beta))
        mask = causal[:size, :size]
        if log_decay is None:
            gamma = decay = None
            gap = mask.to(work)
        else:
            cum = log_decay[:, :, start:end].to(work).cumsum(2)
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
    """The (gated) delta rule, chunked: ``S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T``, ``o_t = S_t^T q_t``.

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
    """
    _check_inputs(q, k, v, beta, log_decay, initial_state, chunk_size)
    return delta_rule_reference(q, k, v, beta, log_decay, initial_state, chunk_size)


def _shape_error(name: str, expected: str, tensor) -> ValueError:
    got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
    return ValueError(f"{name}: expected {expected}, got {got}")


def _check_inputs(q, k, v, beta, log_decay, initial_state, chunk_size) -> None:
    """Raise a ValueError naming the first bad argument."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise _shape_error("q", "rank 4 (batch, heads, length, d_k)", q)
    check_dtype("q", q, DTYPES)
    batch, heads, length, d_k = q.shape
    if not isinstance(k, torch.Tensor) or k.shape != q.shape:
        raise _shape_error("k", f"shape {tuple(q.shape)} (that of q)", k)
    if not isinstance(v, torch.Tensor) or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise _shape_error("v", f"shape ({batch}, {heads}, {length}, d_v)", v)
    if not isinstance(beta, torch.Tensor) or beta.shape != q.shape[:3]:
        raise _shape_error("beta", f"shape {tuple(q.shape[:3])}", beta)
    if log_decay is not None and (not isinstance(log_decay, torch.Tensor) or log_decay.shape != q.shape[:3]):
        raise _shape_error("log_decay", f"None or shape {tuple(q.shape[:3])}", log_decay)
    if initial_state is not None and (not isinstance(initial_state, torch.Tensor)
                                      or initial_state.shape != (batch, heads, d_k, v.shape[-1])):
        raise _shape_error("initial_state", f"None or shape {(batch, heads, d_k, v.shape[-1])}", initial_state)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: expected a power of two >= 16, got {chunk_size!r}")
    check_like("q", q, {"k": k, "v": v, "beta": beta, "log_decay": log_decay})
    check_like("q", q, {"initial_state": initial_state}, dtype=False)
