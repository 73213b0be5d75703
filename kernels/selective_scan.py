"""The selective scan of Mamba: Triton forward and backward kernels, and a chunked PyTorch twin.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023): per
channel ``d`` a diagonal state ``h[d, :]`` of ``state`` numbers, with an input-dependent step
``delta`` and input-dependent ``B``, ``C`` shared by all channels,

    ``h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t``,
    ``y_t = C_t . h_t + D u_t``,  then  ``y_t * silu(z_t)`` when a gate ``z`` is given.

Neither path ever holds ``(batch, channels, length, state)`` in memory; the state accumulates
in float32 (float64 for float64 inputs) whatever the input dtype.

Triton: the forward kernel keeps the state in registers over the time loop, one program per
(batch, block of channels), and writes the state at the start of every chunk of ``CHUNK``
tokens (``(batch, length / CHUNK, channels, state)``: a checkpoint, ``CHUNK`` times smaller
than the states).  The backward kernel walks the chunks in reverse: it recomputes a chunk's
states from its checkpoint into a per-program scratch of ``CHUNK`` states, then runs the
adjoint recurrence ``g_{t-1} = exp(delta_t A) g_t + C_{t-1} dy_{t-1}`` backwards through it.
The gradients of ``B`` and ``C`` (summed over channels) come out as per-program partial sums
that a deterministic ``sum`` reduces (no atomics).

Twin (the CPU path, and training on a CPU): the recurrence itself, time-major.  The inputs are
copied once to ``(length, batch, ...)``; chunks of ``T`` tokens (about ``CHUNK_ELEMENTS`` state
numbers per buffer, so the few ``(T, batch, state, channels)`` buffers stay in a cache) get their
decays ``exp(delta A)`` (one exp per state number) and inputs ``delta u B`` in two batched ops,
then one fused multiply-add per token, ``h_t = decay_t * h_{t-1} + x_t``, on a contiguous
``(batch, state, channels)`` slice; the readout ``C_t . h_t`` is a batched matrix-vector product.
Exact at any step size (no cumulative-sum closed form dividing by decays).  Under autograd a custom
backward keeps only the state at the start of every ``ceil(state / T)`` chunks (at most ``batch x
channels x length`` numbers, whatever the state), recomputes each chunk's states from it and runs
the adjoint recurrence ``R_t = C_t dy_t + exp(delta_{t+1} A) R_{t+1}`` backwards the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..precision import compute_dtype
from .backend import device_guard, interpreting, select, triton_available
from .tensor_checks import check_dtype, check_like, dtype_names, empty_result, shape_error

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPES = (*TRITON_DTYPES, torch.float64)
MAX_TRITON_STATE = 256
CHUNK = 64  # tokens between the Triton forward's state checkpoints
# The twin's chunks: about this many state numbers per (tokens, batch, channels, state) buffer, so its
# few buffers stay in a CPU's cache (4 MiB in float32: past a 2 MiB L2 they still sit in the L3), and at
# most MAX_CHUNK_REFERENCE tokens.  Against 1 << 18 and 64 tokens, a Mamba layer's forward+backward
# timed faster at B 8, L 1024 (its chunks grow from 4 tokens to 16) and the same within the noise at
# B 2, L 2048 and at MQAR's B 64, L 64, timed in alternation on a 2-core Xeon.
CHUNK_ELEMENTS = 1 << 20
MAX_CHUNK_REFERENCE = 16


# -- PyTorch twin ---------------------------------------------------------------------------
def _chunk_length(batch: int, channels: int, state: int, length: int | None = None) -> int:
    """Tokens per twin chunk: about ``CHUNK_ELEMENTS`` state numbers per buffer, so a chunk's
    ``(tokens, batch, state, channels)`` buffers stay in a CPU's cache whatever the shape (and no
    more tokens than the sequence has)."""
    tokens = max(1, min(MAX_CHUNK_REFERENCE, CHUNK_ELEMENTS // max(1, batch * channels * state)))
    return tokens if length is None else max(1, min(tokens, length))


def _chunk_inputs(u, delta, A, B, decay, inputs):
    """Fill ``decay = exp(delta A)`` and ``inputs = delta u B`` (both ``(T, batch, state, d)``) for one chunk
    of ``u, delta: (T, batch, d)``, ``A: (state, d)`` and ``B: (T, batch, state)``; one exp per state
    number, no division."""
    torch.mul(delta.unsqueeze(-2), A, out=decay).exp_()
    torch.mul((delta * u).unsqueeze(-2), B.unsqueeze(-1), out=inputs)


def _run_states(decay, inputs, h0, states):
    """``states[t + 1] = decay[t] * states[t] + inputs[t]`` from ``states[0] = h0`` over a chunk: the recurrence
    itself, one fused multiply-add per token on a contiguous ``(batch, state, d)`` slice (exact, no range
    limit, unlike a cumulative-sum closed form that divides by the decays)."""
    states[0].copy_(h0)
    for t, (a, x) in enumerate(zip(decay, inputs)):
        torch.addcmul(x, a, states[t], out=states[t + 1])
    return states[len(decay)]


class _Buffers:
    """The ``(T, batch, state, d)`` scratch of one scan call, allocated once and reused by every chunk."""

    def __init__(self, tokens: int, batch: int, channels: int, state: int, like: torch.Tensor, grad: bool):
        shape = (tokens, batch, state, channels)
        self.decay = like.new_empty(shape)
        self.inputs = like.new_empty(shape)
        self.states = like.new_empty((tokens + 1, *shape[1:]))
        self.grad = like.new_empty(shape) if grad else None
        self.d_log_delta = like.new_zeros(shape) if grad else None  # dA's per-token terms, summed at the end
        # the per-token slices, made once (the loops over tokens index them)
        self.rows = {name: getattr(self, name).unbind(0) for name in ("decay", "inputs", "states", "grad")
                     if getattr(self, name) is not None}

    def views(self, tokens: int):
        return self.decay[:tokens], self.inputs[:tokens], self.states[:tokens + 1]

    def row_views(self, name: str, tokens: int):
        return self.rows[name][:tokens]


def _chunk_forward(u, delta, A, B, C, h0, buffers: _Buffers, *, outputs: bool = True):
    """One chunk: ``u, delta: (T, batch, d)``, ``A: (state, d)``, ``B, C: (T, batch, state)``, ``h0: (batch,
    state, d)`` -> ``(y: (T, batch, d) without skip and gate or None, h_T)`` (``h_T`` a view of the buffers).

    The states are laid out ``(batch, state, d)``: the readout ``C_t . h_t`` and the backward's sums over
    ``d`` and over the state are then batched matrix-vector products over contiguous rows."""
    tokens = u.shape[0]
    decay, inputs, states = buffers.views(tokens)
    _chunk_inputs(u, delta, A, B, decay, inputs)
    last = _run_states(buffers.row_views("decay", tokens), buffers.row_views("inputs", tokens), h0,
                       buffers.row_views("states", tokens + 1))
    y = torch.matmul(C.unsqueeze(-2), states[1:]).squeeze(-2) if outputs else None
    return y, last


def _chunk_backward(u, delta, A, B, C, h0, dy, g, buffers: _Buffers, du, ddelta):
    """The gradients of :func:`_chunk_forward` for ``dy: (T, batch, d)`` and ``g = dL/dh_T: (batch, state, d)``:
    writes ``du`` and ``ddelta`` (``(T, batch, d)``), adds dA's terms to ``buffers.d_log_delta``, returns
    ``(dB, dC, dh0)``; the chunk's states recomputed from ``h0``.

    With ``R_t = dL/dh_t`` (the adjoint recurrence ``R_t = C_t dy_t + exp(delta_{t+1} A) R_{t+1}``):
    ``dL/d(delta_t u_t B_t) = R_t`` and ``dL/d(delta_t A) = R_t exp(delta_t A) h_{t-1}``."""
    tokens = u.shape[0]
    decay, inputs, states = buffers.views(tokens)
    _chunk_inputs(u, delta, A, B, decay, inputs)
    decays = buffers.row_views("decay", tokens)
    _run_states(decays, buffers.row_views("inputs", tokens), h0, buffers.row_views("states", tokens + 1))
    dC = torch.matmul(states[1:], dy.unsqueeze(-1)).squeeze(-1)  # sum_d dy h_t
    adjoint = torch.mul(dy.unsqueeze(-2), C.unsqueeze(-1), out=buffers.grad[:tokens])
    adjoint[-1] += g
    slots = buffers.row_views("grad", tokens)
    for t in range(tokens - 2, -1, -1):
        slots[t].addcmul_(decays[t + 1], slots[t + 1])
    dh0 = adjoint[0] * decay[0]
    d_delta_u = torch.matmul(B.unsqueeze(-2), adjoint).squeeze(-2)  # sum_n R B
    dB = torch.matmul(adjoint, (delta * u).unsqueeze(-1)).squeeze(-1)  # sum_d R delta u
    d_log = decay.mul_(states[:-1]).mul_(adjoint)  # dL/d(delta_t A): (T, batch, state, d)
    buffers.d_log_delta[:tokens].addcmul_(d_log, delta.unsqueeze(-2))
    torch.sum(torch.mul(d_log, A, out=states[:-1]), -2, out=ddelta).addcmul_(d_delta_u, u)
    torch.mul(d_delta_u, delta, out=du)
    return dB, dC, dh0


def _chunks(length: int, tokens: int) -> list[slice]:
    return [slice(start, start + tokens) for start in range(0, length, tokens)]


def _chunks_per_saved_state(state: int, tokens: int) -> int:
    """Chunks between the states the twin's forward keeps for its backward: one state per ``state``
    tokens at least, so those states take at most ``batch x d x length`` numbers (as many as ``u``)
    whatever the state."""
    return max(1, -(-state // tokens))


class _ScanFunction(torch.autograd.Function):
    """The twin's scan ``(u, delta, A, B, C, h0) -> (y without skip and gate, last state)``, time-major:
    ``u, delta: (length, batch, d)``, ``A: (state, d)``, ``B, C: (length, batch, state)``, ``h0`` and the
    last state ``(batch, state, d)``.  The forward
    keeps the state at the start of every few chunks; the backward recomputes the states in between
    (memory ``batch x d x length``, not ``x state``) and runs the adjoint recurrence backwards."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0):
        length, batch, channels = u.shape
        state = A.shape[0]
        tokens = _chunk_length(batch, channels, state, length)
        buffers = _Buffers(tokens, batch, channels, state, u, grad=False)
        y, saved = torch.empty_like(u), []
        h, every = h0, _chunks_per_saved_state(state, tokens)
        for i, part in enumerate(_chunks(length, tokens)):
            if i % every == 0:
                saved.append(h.clone())
            y[part], h = _chunk_forward(u[part], delta[part], A, B[part], C[part], h, buffers)
        ctx.save_for_backward(u, delta, A, B, C, *saved)
        ctx.tokens = tokens
        return y, h.clone()

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, *saved = ctx.saved_tensors
        length, batch, channels = u.shape
        state, tokens = A.shape[0], ctx.tokens
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        g = torch.zeros_like(saved[0]) if dlast is None else dlast.contiguous()
        buffers = _Buffers(tokens, batch, channels, state, u, grad=True)
        du, ddelta, dB, dC = (torch.empty_like(t) for t in (u, delta, B, C))
        chunks, every = _chunks(length, tokens), _chunks_per_saved_state(state, tokens)
        for group in reversed(range(len(saved))):
            parts = chunks[group * every:(group + 1) * every]
            starts = [saved[group]]
            for part in parts[:-1]:  # the states between two kept ones, again
                starts.append(_chunk_forward(u[part], delta[part], A, B[part], C[part], starts[-1], buffers,
                                             outputs=False)[1].clone())
            for part, h0 in reversed(list(zip(parts, starts, strict=True))):
                dB[part], dC[part], g = _chunk_backward(u[part], delta[part], A, B[part], C[part], h0, dy[part], g,
                                                        buffers, du[part], ddelta[part])
        return du, ddelta, buffers.d_log_delta.sum((0, 1)), dB, dC, g


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, initial_state=None):
    """The PyTorch twin of :func:`selective_scan` (same arguments, same result), chunked (see the module)."""
    work = compute_dtype(u.dtype)
    batch, channels, length = u.shape
    h = (u.new_zeros(batch, channels, A.shape[1], dtype=work) if initial_state is None
         else initial_state.to(work))
    if length == 0:
        return u.clone(), h
    # time-major copies: every token's (batch, d) and (batch, state) slices contiguous
    u_t, delta_t = (t.to(work).permute(2, 0, 1).contiguous() for t in (u, delta))
    B_t, C_t = (t.to(work).permute(2, 0, 1).contiguous() for t in (B, C))
    A_w, h = A.to(work).t().contiguous(), h.transpose(1, 2).contiguous()  # (state, d), (batch, state, d)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, initial_state)):
        y, h = _ScanFunction.apply(u_t, delta_t, A_w, B_t, C_t, h)
    else:
        tokens = _chunk_length(batch, channels, A.shape[1], length)
        buffers = _Buffers(tokens, batch, channels, A.shape[1], u_t, grad=False)
        y = torch.empty_like(u_t)
        for part in _chunks(length, tokens):
            y[part], h = _chunk_forward(u_t[part], delta_t[part], A_w, B_t[part], C_t[part], h, buffers)
    h = h.transpose(1, 2).contiguous()
    # the skip and the gate in the same time-major layout (mixing layouts costs several times more)
    if D is not None:
        y = y + D.to(work) * u_t
    if z is not None:
        y = y * F.silu(z.to(work).permute(2, 0, 1).contiguous())
    return y.permute(1, 2, 0).to(u.dtype), h


def offtheshelf_selective_scan(u, delta, A, B, C, D=None, z=None, initial_state=None):
    """The baseline for benchmarks: the recurrence as a PyTorch loop over time (same arguments and result)."""
    work = compute_dtype(u.dtype)
    u_w, delta_w, A_w, B_w, C_w = (t.to(work) for t in (u, delta, A, B, C))
    h = (u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=work) if initial_state is None
         else initial_state.to(work))
    outputs = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta_w[..., t, None] * A_w) * h + (delta_w[..., t] * u_w[..., t])[..., None] * B_w[:, None, :, t]
        outputs.append((h * C_w[:, None, :, t]).sum(-1))
    y = torch.stack(outputs, -1) if outputs else u_w[..., :0]
    if D is not None:
        y = y + D.to(work)[:, None] * u_w
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(u.dtype), h


# -- public function ----------------------------------------------------------------------
def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan (see the module): ``(u, delta, A, B, C, D, z) -> (y, last_state)``.

    Args:
        u: ``(batch, channels, length)``, float16, bfloat16, float32 or float64, any strides.
        delta: ``(batch, channels, length)``, the step (already positive, e.g. a softplus), ``u``'s dtype.
        A: ``(channels, state)``, the (negative) diagonal of the state matrix, any floating dtype.
        B, C: ``(batch, state, length)``, ``u``'s dtype, shared by every channel.
        D: ``(channels,)`` skip weights or None; any floating dtype.
        z: ``(batch, channels, length)`` gate or None (``y * silu(z)``), ``u``'s dtype.
        initial_state: ``(batch, channels, state)`` or None (zeros), any floating dtype.

    Returns:
        ``y: (batch, channels, length)`` in ``u``'s dtype and the state after the last token,
        ``(batch, channels, state)`` in ``compute_dtype(u.dtype)`` (float32, or float64).

    Backends (:mod:`seqarch.kernels.backend`): the Triton kernels take float16, bfloat16 and
    float32 with ``state <= MAX_TRITON_STATE = 256`` (:func:`triton_limits`); float64 or a larger
    state runs the twin (:func:`selective_scan_reference`) under ``auto`` and raises ``ValueError``
    under forced ``triton``.  Zero batch, channels or length: an empty ``y`` and the initial
    state (zeros without one) as the last state; a state size of 0 is a ``ValueError``.
    """
    _check_inputs(u, delta, A, B, C, D, z, initial_state)
    batch, channels, _ = u.shape
    work = compute_dtype(u.dtype)
    if u.numel() == 0:  # nothing to scan: the state passes through unchanged
        last = (u.new_zeros(batch, channels, A.shape[1], dtype=work) if initial_state is None
                else initial_state.to(work))
        return empty_result(u.shape, u, u, delta, A, B, C, D, z), last
    if select("selective_scan", u, triton_limits(u, delta, A, B, C, D, z, initial_state)) == "triton":
        return SelectiveScanFunction.apply(u, delta, A, B, C, D, z, initial_state)
    return selective_scan_reference(u, delta, A, B, C, D, z, initial_state)


def triton_limits(u, delta, A, B, C, D=None, z=None, initial_state=None) -> str | None:
    """Why the Triton path cannot take ``selective_scan(...)``, or None when it can."""
    if u.dtype not in TRITON_DTYPES:
        return f"u: expected dtype {dtype_names(TRITON_DTYPES)} for the Triton path, got {u.dtype}"
    if A.shape[1] > MAX_TRITON_STATE:
        return f"A: expected state <= {MAX_TRITON_STATE} for the Triton path, got {A.shape[1]}"
    return None


def _check_inputs(u, delta, A, B, C, D, z, initial_state) -> None:
    """Raise a ValueError naming the first bad argument."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise shape_error("u", "shape (batch, channels, length)", u)
    check_dtype("u", u, DTYPES)
    batch, channels, length = u.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != channels:
        raise shape_error("A", f"shape ({channels}, state)", A)
    state = A.shape[1]
    if state < 1:
        raise ValueError(f"A: expected a state size of at least 1, got shape {tuple(A.shape)}")
    expected = {"delta": (delta, (batch, channels, length)), "B": (B, (batch, state, length)),
                "C": (C, (batch, state, length)), "z": (z, (batch, channels, length))}
    for name, (tensor, shape) in expected.items():
        if (tensor is not None or name != "z") and (not isinstance(tensor, torch.Tensor) or tensor.shape != shape):
            raise shape_error(name, f"shape {shape}", tensor)
    for name, tensor, shape in (("D", D, (channels,)), ("initial_state", initial_state, (batch, channels, state))):
        if tensor is not None and (not isinstance(tensor, torch.Tensor) or tensor.shape != shape):
            raise shape_error(name, f"shape {shape} or None", tensor)
    check_like("u", u, {"delta": delta, "B": B, "C": C, "z": z})
    check_like("u", u, {"A": A, "D": D, "initial_state": initial_state}, dtype=False)
    for name, tensor in (("A", A), ("D", D), ("initial_state", initial_state)):
        if tensor is not None:
            check_dtype(name, tensor, DTYPES)


# -- Triton path ----------------------------------------------------------------------------
def _block_channels(channels: int, state: int, on_gpu: bool) -> tuple[int, int]:
    """Channels per program and warps: the (channels, state) tile of states lives in registers."""
    block_n = triton.next_power_of_2(state)
    if not on_gpu:  # the interpreter: few, large programs (each costs a fixed Python overhead)
        return min(triton.next_power_of_2(channels), 64), 1
    return max(1, min(triton.next_power_of_2(channels), 2048 // block_n, 32)), 4


def _forward(u, delta, A, B, C, D, z, initial_state):
    batch, channels, length = u.shape
    state = A.shape[1]
    block_d, num_warps = _block_channels(channels, state, u.is_cuda and not interpreting())
    n_chunks = triton.cdiv(length, CHUNK)
    y = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    last = torch.empty(batch, channels, state, device=u.device, dtype=torch.float32)
    checkpoints = torch.empty(batch, n_chunks, channels, state, device=u.device, dtype=torch.float32)
    init = initial_state if initial_state is not None else last
    grid = (triton.cdiv(channels, block_d), batch)
    _selective_scan_forward_kernel[grid](
        u, delta, A, B, C, D if D is not None else A, z if z is not None else u, init, y, last, checkpoints,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        D.stride(0) if D is not None else 0, *(z.stride() if z is not None else (0, 0, 0)), *init.stride(),
        *y.stride(), channels, length, state,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_INIT=initial_state is not None, CHUNK=CHUNK,
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(state), num_warps=num_warps,
    )
    return y, last, checkpoints


def _backward(dy, dlast, u, delta, A, B, C, D, z, checkpoints):
    """Returns ``(du, ddelta, dA, dB, dC, dD or None, dz or None, dinitial_state)``."""
    batch, channels, length = u.shape
    state = A.shape[1]
    block_d, num_warps = _block_channels(channels, state, u.is_cuda and not interpreting())
    n_blocks = triton.cdiv(channels, block_d)
    f32 = torch.float32
    du, ddelta = (torch.empty(u.shape, device=u.device, dtype=u.dtype) for _ in range(2))
    dz = torch.empty(u.shape, device=u.device, dtype=u.dtype) if z is not None else None
    dA_part = torch.empty(batch, channels, state, device=u.device, dtype=f32)
    dD_part = torch.empty(batch, channels, device=u.device, dtype=f32)
    dB_part = torch.empty(batch, n_blocks, state, length, device=u.device, dtype=f32)
    dC_part = torch.empty(batch, n_blocks, state, length, device=u.device, dtype=f32)
    dinit = torch.empty(batch, channels, state, device=u.device, dtype=f32)
    scratch = torch.empty(batch, channels, CHUNK, state, device=u.device, dtype=f32)
    if dlast is None:
        dlast = torch.zeros(batch, channels, state, device=u.device, dtype=f32)
    dy = dy if dy is not None else torch.zeros_like(u)
    _selective_scan_backward_kernel[(n_blocks, batch)](
        u, delta, A, B, C, D if D is not None else A, z if z is not None else u, dy, dlast, checkpoints, scratch,
        du, ddelta, dz if dz is not None else du, dA_part, dD_part, dB_part, dC_part, dinit,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        D.stride(0) if D is not None else 0, *(z.stride() if z is not None else (0, 0, 0)), *dy.stride(),
        *dlast.stride(), channels, length, state, n_blocks,
        HAS_D=D is not None, HAS_Z=z is not None, CHUNK=CHUNK,
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(state), num_warps=num_warps,
    )
    dD = dD_part.sum(0) if D is not None else None
    return du, ddelta, dA_part.sum(0), dB_part.sum(1), dC_part.sum(1), dD, dz, dinit


class SelectiveScanFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: ``apply(u, delta, A, B, C, D, z, initial_state) -> (y, last)``,
    inputs checked by :func:`selective_scan`."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, initial_state):
        with device_guard(u):
            y, last, checkpoints = _forward(u, delta, A, B, C, D, z, initial_state)
        ctx.save_for_backward(u, delta, A, B, C, D, z, initial_state, checkpoints)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, D, z, initial_state, checkpoints = ctx.saved_tensors
        with device_guard(u):
            du, ddelta, dA, dB, dC, dD, dz, dinit = _backward(dy, dlast, u, delta, A, B, C, D, z, checkpoints)
        return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), None if D is None else dD.to(D.dtype),
                dz, None if initial_state is None else dinit.to(initial_state.dtype))


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _selective_scan_forward_kernel(
        u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, init_ptr, y_ptr, last_ptr, ckpt_ptr,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_ad, s_an, s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_dd,
        s_zb, s_zd, s_zl, s_ib, s_id, s_in, s_yb, s_yd, s_yl,
        channels, length, state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_INIT: tl.constexpr, CHUNK: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_d, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        d_ok, n_ok = d < channels, n < state
        tile_ok = d_ok[:, None] & n_ok[None, :]
        a = tl.load(a_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=tile_ok, other=0.0).to(tl.float32)
        skip = tl.load(d_ptr + d * s_dd, mask=d_ok, other=0.0).to(tl.float32) if HAS_D else 0.0
        if HAS_INIT:
            h = tl.load(init_ptr + pid_b * s_ib + d[:, None] * s_id + n[None, :] * s_in, mask=tile_ok,
                        other=0.0).to(tl.float32)
        else:
            h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        # checkpoints: (batch, n_chunks, channels, state), contiguous
        ckpt = ckpt_ptr + pid_b * tl.cdiv(length, CHUNK) * channels * state + d[:, None] * state + n[None, :]
        u_row, dt_row = u_ptr + pid_b * s_ub + d * s_ud, dt_ptr + pid_b * s_tb + d * s_td
        z_row, y_row = z_ptr + pid_b * s_zb + d * s_zd, y_ptr + pid_b * s_yb + d * s_yd
        b_col, c_col = b_ptr + pid_b * s_bb + n * s_bn, c_ptr + pid_b * s_cb + n * s_cn
        for k in range(tl.cdiv(length, CHUNK)):
            tl.store(ckpt + k * channels * state, h, mask=tile_ok)
            for t in range(k * CHUNK, tl.minimum(k * CHUNK + CHUNK, length)):
                uv = tl.load(u_row + t * s_ul, mask=d_ok, other=0.0).to(tl.float32)
                dt = tl.load(dt_row + t * s_tl, mask=d_ok, other=0.0).to(tl.float32)
                bv = tl.load(b_col + t * s_bl, mask=n_ok, other=0.0).to(tl.float32)
                cv = tl.load(c_col + t * s_cl, mask=n_ok, other=0.0).to(tl.float32)
                h = tl.exp(dt[:, None] * a) * h + (dt * uv)[:, None] * bv[None, :]
                yv = tl.sum(h * cv[None, :], axis=1) + skip * uv
                if HAS_Z:
                    zv = tl.load(z_row + t * s_zl, mask=d_ok, other=0.0).to(tl.float32)
                    yv = yv * zv * tl.sigmoid(zv)
                tl.store(y_row + t * s_yl, yv.to(y_ptr.dtype.element_ty), mask=d_ok)
        tl.store(last_ptr + pid_b * channels * state + d[:, None] * state + n[None, :], h, mask=tile_ok)

    @triton.jit
    def _selective_scan_backward_kernel(
        u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, dy_ptr, dlast_ptr, ckpt_ptr, scratch_ptr,
        du_ptr, ddt_ptr, dz_ptr, da_part_ptr, dd_part_ptr, db_part_ptr, dc_part_ptr, dinit_ptr,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_ad, s_an, s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_dd,
        s_zb, s_zd, s_zl, s_gb, s_gd, s_gl, s_lb, s_ld, s_ln,
        channels, length, state, n_blocks,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, CHUNK: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_d, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        d_ok, n_ok = d < channels, n < state
        tile_ok = d_ok[:, None] & n_ok[None, :]
        tile = d[:, None] * state + n[None, :]  # offsets in the contiguous (channels, state) buffers
        a = tl.load(a_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=tile_ok, other=0.0).to(tl.float32)
        skip = tl.load(d_ptr + d * s_dd, mask=d_ok, other=0.0).to(tl.float32) if HAS_D else 0.0
        # g: the gradient reaching the state after token t (dlast after the last token)
        g = tl.load(dlast_ptr + pid_b * s_lb + d[:, None] * s_ld + n[None, :] * s_ln, mask=tile_ok,
                    other=0.0).to(tl.float32)
        da_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dd_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        n_chunks = tl.cdiv(length, CHUNK)
        ckpt = ckpt_ptr + pid_b * n_chunks * channels * state + tile
        scratch = scratch_ptr + pid_b * channels * CHUNK * state + d[:, None] * (CHUNK * state) + n[None, :]
        u_row, dt_row = u_ptr + pid_b * s_ub + d * s_ud, dt_ptr + pid_b * s_tb + d * s_td
        z_row, dy_row = z_ptr + pid_b * s_zb + d * s_zd, dy_ptr + pid_b * s_gb + d * s_gd
        out_row = pid_b * channels * length + d * length  # du, ddelta, dz: contiguous
        b_col, c_col = b_ptr + pid_b * s_bb + n * s_bn, c_ptr + pid_b * s_cb + n * s_cn
        part_col = (pid_b * n_blocks + pid_d) * state * length + n * length  # dB, dC partials
        for kk in range(n_chunks):
            k = n_chunks - 1 - kk
            start = k * CHUNK
            stop = tl.minimum(start + CHUNK, length)
            # Recompute the chunk: scratch slot j holds the state before token start + j.
            h = tl.load(ckpt + k * channels * state, mask=tile_ok, other=0.0)
            for t in range(start, stop):
                tl.store(scratch + (t - start) * state, h, mask=tile_ok)
                uv = tl.load(u_row + t * s_ul, mask=d_ok, other=0.0).to(tl.float32)
                dt = tl.load(dt_row + t * s_tl, mask=d_ok, other=0.0).to(tl.float32)
                bv = tl.load(b_col + t * s_bl, mask=n_ok, other=0.0).to(tl.float32)
                h = tl.exp(dt[:, None] * a) * h + (dt * uv)[:, None] * bv[None, :]
            tl.debug_barrier()
            for j in range(stop - start):
                t = stop - 1 - j
                h_prev = tl.load(scratch + (t - start) * state, mask=tile_ok, other=0.0)
                uv = tl.load(u_row + t * s_ul, mask=d_ok, other=0.0).to(tl.float32)
                dt = tl.load(dt_row + t * s_tl, mask=d_ok, other=0.0).to(tl.float32)
                bv = tl.load(b_col + t * s_bl, mask=n_ok, other=0.0).to(tl.float32)
                cv = tl.load(c_col + t * s_cl, mask=n_ok, other=0.0).to(tl.float32)
                dyv = tl.load(dy_row + t * s_gl, mask=d_ok, other=0.0).to(tl.float32)
                decay = tl.exp(dt[:, None] * a)
                h = decay * h_prev + (dt * uv)[:, None] * bv[None, :]
                if HAS_Z:
                    zv = tl.load(z_row + t * s_zl, mask=d_ok, other=0.0).to(tl.float32)
                    sig = tl.sigmoid(zv)
                    y_pre = tl.sum(h * cv[None, :], axis=1) + skip * uv
                    tl.store(dz_ptr + out_row + t, (dyv * y_pre * sig * (1 + zv * (1 - sig))).to(
                        dz_ptr.dtype.element_ty), mask=d_ok)
                    dyv = dyv * zv * sig
                g += dyv[:, None] * cv[None, :]
                tl.store(dc_part_ptr + part_col + t, tl.sum(dyv[:, None] * h, axis=0), mask=n_ok)
                tl.store(db_part_ptr + part_col + t, tl.sum(g * (dt * uv)[:, None], axis=0), mask=n_ok)
                gb = g * bv[None, :]
                du = dt * tl.sum(gb, axis=1) + skip * dyv
                g_decay = g * decay
                ddt = tl.sum(g_decay * a * h_prev, axis=1) + uv * tl.sum(gb, axis=1)
                da_acc += g_decay * h_prev * dt[:, None]
                dd_acc += dyv * uv
                tl.store(du_ptr + out_row + t, du.to(du_ptr.dtype.element_ty), mask=d_ok)
                tl.store(ddt_ptr + out_row + t, ddt.to(ddt_ptr.dtype.element_ty), mask=d_ok)
                g = g_decay
            tl.debug_barrier()
        tl.store(dinit_ptr + pid_b * channels * state + tile, g, mask=tile_ok)
        tl.store(da_part_ptr + pid_b * channels * state + tile, da_acc, mask=tile_ok)
        tl.store(dd_part_ptr + pid_b * channels + d, dd_acc, mask=d_ok)

