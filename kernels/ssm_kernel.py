"""Convolution kernels of state-space layers without the ``(channels, state, length)`` tensor.

Two ops, each a Triton forward and backward (in :mod:`seqarch.kernels.ssm_kernel_triton`),
a PyTorch twin, an autograd Function and one public function:

- :func:`vandermonde_kernel`: the S4D kernel ``K[h, l] = 2 Re(sum_n C[h, n] z[h, n]^l)``,
  ``z = exp(log_z)`` (Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of
  Diagonal State Space Models", NeurIPS 2022).
- :func:`cauchy_kernel`: the Cauchy sums ``sum_n v[h, j, n] / (a[l] - b[h, l] lambda[h, n])``
  of S4's generating function (Gu, Goel, Ré, "Efficiently Modeling Long Sequences with
  Structured State Spaces", ICLR 2022).

Gradients follow PyTorch's complex convention (``grad = dL/dRe p + i dL/dIm p`` for a real
loss ``L``).  Vandermonde, with ``S0 = sum_l g_l z^l`` and ``S1 = sum_l g_l l z^l``:
``grad_C = 2 conj(S0)``, ``grad_log_z = 2 conj(C S1)`` (summed over leading batch dims).
Cauchy, with ``r = 1/d``, ``d = a - b lambda``: ``grad_v = sum_l g conj(r)``,
``W = (sum_j conj(v) g) conj(r)^2`` (minus ``dL/dd``), ``grad_b = sum_n conj(lambda) W``,
``grad_lambda = sum_l W conj(b)`` (``d``'s minus signs cancel ``W``'s).
"""

from __future__ import annotations

import math

import torch

from . import ssm_kernel_triton as triton_ops
from .backend import backend, device_guard

# Complex dtypes the Triton kernels run in; complex128 inputs take the twin (documented below).
TRITON_DTYPES = (torch.complex64,)
DTYPES = (torch.complex64, torch.complex128)
# Complex elements of one (channels, state, chunk) block of the Cauchy twin: 2^22 complex64 is 32 MiB.
CAUCHY_CHUNK_ELEMENTS = 1 << 22


# -- Vandermonde (S4D) ---------------------------------------------------------------------------
def vandermonde_block_size(length: int) -> int:
    """Block ``b ~ sqrt(length)`` of the twin's split ``l = j b + i``."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def vandermonde_reference(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
    """The PyTorch twin of :func:`vandermonde_kernel` (same arguments, same result).

    Splitting ``l = j b + i`` with ``b ~ sqrt(length)`` makes the sum one real batched
    matrix product of a ``(channels, length/b, 2 state)`` factor by a ``(channels, 2 state, b)``
    factor: memory ``O(channels * state * sqrt(length))``, gradients by autograd.
    """
    block = vandermonde_block_size(length)
    n_blocks = -(-length // block)
    real_dtype = log_z.real.dtype
    steps_in = torch.arange(block, device=log_z.device, dtype=real_dtype)
    steps_out = torch.arange(n_blocks, device=log_z.device, dtype=real_dtype) * block
    inner = torch.exp(log_z.unsqueeze(-1) * steps_in)  # (channels, state, block)
    outer = coef.unsqueeze(-2) * torch.exp(log_z.unsqueeze(-2) * steps_out.unsqueeze(-1))
    # Re(u v) = Re u Re v - Im u Im v: one real product with twice the inner dimension.
    left = torch.cat([outer.real, -outer.imag], dim=-1)  # (..., channels, n_blocks, 2 state)
    right = torch.cat([inner.real, inner.imag], dim=-2)  # (channels, 2 state, block)
    out = 2 * torch.matmul(left, right)  # (..., channels, n_blocks, block)
    return out.flatten(-2)[..., :length]


def offtheshelf_vandermonde(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
    """The materialising baseline for benchmarks: builds the ``(..., channels, state, length)`` powers."""
    steps = torch.arange(length, device=log_z.device, dtype=log_z.real.dtype)
    return 2 * (coef.unsqueeze(-1) * torch.exp(log_z.unsqueeze(-1) * steps)).sum(-2).real


class VandermondeTriton(torch.autograd.Function):
    """:func:`vandermonde_kernel` on the Triton kernels (complex64 in, float32 out)."""

    @staticmethod
    def forward(ctx, coef, log_z, length):
        rows = coef.reshape(-1, coef.shape[-1])
        ctx.save_for_backward(rows, log_z)
        ctx.coef_shape = coef.shape
        with device_guard(rows):
            out = triton_ops.vandermonde_forward(rows, log_z, length)
        return out.reshape(*coef.shape[:-1], length)

    @staticmethod
    def backward(ctx, grad_out):
        rows, log_z = ctx.saved_tensors
        grad = grad_out.reshape(rows.shape[0], -1).to(torch.float32)
        with device_guard(grad):
            s0, s1 = triton_ops.vandermonde_backward_sums(grad, log_z)
        grad_coef = (2 * s0.conj()).reshape(ctx.coef_shape) if ctx.needs_input_grad[0] else None
        grad_log_z = None
        if ctx.needs_input_grad[1]:
            grad_log_z = (2 * (rows * s1).conj()).reshape(-1, *log_z.shape).sum(0)
        return grad_coef, grad_log_z, None


def vandermonde_kernel(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
    """``K[..., h, l] = 2 Re(sum_n coef[..., h, n] * exp(log_z[h, n] * l))`` for ``l < length``.

    Args:
        coef: complex ``(..., channels, state)``; leading dimensions are batched (S4D passes
            ``(directions, channels, state)``, its prefill ``(batch, channels, state)``).
        log_z: complex ``(channels, state)``, the log of the eigenvalues (``dt * A``).
        length: positive int, number of positions.
    Returns:
        real ``(..., channels, length)`` in ``coef``'s real dtype.

    Dtypes: complex64 or complex128 (same for both).  The Triton kernels run complex64 (fp32
    arithmetic); complex128 inputs always take the PyTorch twin.  Memory: no
    ``(channels, state, length)`` tensor in either pass (Triton: ``O(rows * (state + length))``;
    twin: ``O(rows * state * sqrt(length))``).
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length: expected a positive int, got {length!r}")
    if log_z.dim() != 2 or log_z.dtype not in DTYPES:
        raise ValueError(f"log_z: expected complex (channels, state), got {log_z.dtype} of shape {tuple(log_z.shape)}")
    if coef.dim() < 2 or coef.shape[-2:] != log_z.shape:
        raise ValueError(f"coef: expected shape (..., {log_z.shape[0]}, {log_z.shape[1]}), got {tuple(coef.shape)}")
    if coef.dtype != log_z.dtype or coef.device != log_z.device:
        raise ValueError(f"coef: expected {log_z.dtype} on {log_z.device} like log_z, got {coef.dtype} on {coef.device}")
    if backend(coef) == "triton" and coef.dtype in TRITON_DTYPES and coef.numel() > 0:
        return VandermondeTriton.apply(coef, log_z, length)
    return vandermonde_reference(coef, log_z, length)


# -- Cauchy (S4) ---------------------------------------------------------------------------------
def _cauchy_chunk(channels: int, state: int, length: int, chunk_elements: int) -> int:
    return max(1, min(length, chunk_elements // max(1, channels * state)))


class CauchyReference(torch.autograd.Function):
    """The PyTorch twin of :func:`cauchy_kernel`: frequency chunk by frequency chunk, reciprocals
    recomputed in the backward pass, so memory stays ``O(channels * state * chunk)``."""

    @staticmethod
    def forward(ctx, numerators, a, b, lam, chunk_elements):
        channels, _, state = numerators.shape
        length = a.shape[-1]
        chunk = _cauchy_chunk(channels, state, length, chunk_elements)
        out = []
        for start in range(0, length, chunk):
            stop = min(length, start + chunk)
            r = 1 / (a[start:stop] - b[:, None, start:stop] * lam[..., None])  # (H, m, c)
            out.append(numerators @ r)  # (H, J, c)
        ctx.save_for_backward(numerators, a, b, lam)
        ctx.chunk = chunk
        return torch.cat(out, dim=-1)

    @staticmethod
    def backward(ctx, grad_out):
        numerators, a, b, lam = ctx.saved_tensors
        length, chunk = a.shape[-1], ctx.chunk
        grad_num = torch.zeros_like(numerators)
        grad_lam = torch.zeros_like(lam)
        grad_b = torch.zeros_like(b)
        num_conj, lam_conj = numerators.conj(), lam.conj()
        for start in range(0, length, chunk):
            stop = min(length, start + chunk)
            b_chunk = b[:, start:stop]
            r_conj = (1 / (a[start:stop] - b_chunk[:, None, :] * lam[..., None])).conj()  # (H, m, c)
            g = grad_out[..., start:stop]  # (H, J, c)
            grad_num += g @ r_conj.transpose(-1, -2)
            grad_d = (num_conj.transpose(-1, -2) @ g) * r_conj * r_conj  # -(dL/dd): (H, m, c)
            # The two reductions of grad_d as batched products, not broadcast temporaries.
            grad_b[:, start:stop] = (lam_conj.unsqueeze(-2) @ grad_d).squeeze(-2)
            grad_lam += (grad_d @ b_chunk.conj().unsqueeze(-1)).squeeze(-1)
        return grad_num, None, grad_b, grad_lam, None


def offtheshelf_cauchy(numerators: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The materialising baseline for benchmarks: the broadcast ``(channels, state, length)`` Cauchy matrix."""
    return numerators @ (1 / (a - b[:, None, :] * lam[..., None]))


class CauchyTriton(torch.autograd.Function):
    """:func:`cauchy_kernel` on the Triton kernels (complex64)."""

    @staticmethod
    def forward(ctx, numerators, a, b, lam):
        ctx.save_for_backward(numerators, a, b, lam)
        with device_guard(numerators):
            return triton_ops.cauchy_forward(numerators, a, b, lam)

    @staticmethod
    def backward(ctx, grad_out):
        with device_guard(grad_out):
            grad_num, grad_b, grad_lam = triton_ops.cauchy_backward(grad_out, *ctx.saved_tensors)
        return grad_num, None, grad_b, grad_lam


def cauchy_kernel(numerators: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, *,
                  chunk_elements: int = CAUCHY_CHUNK_ELEMENTS) -> torch.Tensor:
    """``out[h, j, l] = sum_n numerators[h, j, n] / (a[l] - b[h, l] * lam[h, n])``.

    Args:
        numerators: complex ``(channels, sums, state)``.
        a: complex ``(length,)``, a constant (it must not require a gradient).
        b: complex ``(channels, length)``.
        lam: complex ``(channels, state)``.
        chunk_elements: complex elements of one ``(channels, state, chunk)`` block of the PyTorch
            twin (its memory bound); the Triton kernels keep their tiles in registers.
    Returns:
        complex ``(channels, sums, length)``.

    Dtypes: complex64 or complex128, the same for all four.  The Triton kernels run complex64
    (fp32 arithmetic, IEEE ``tl.dot``); complex128 inputs always take the PyTorch twin.  No
    ``(channels, state, length)`` tensor is held in either pass.
    """
    if lam.dim() != 2 or lam.dtype not in DTYPES:
        raise ValueError(f"lam: expected complex (channels, state), got {lam.dtype} of shape {tuple(lam.shape)}")
    if numerators.dim() != 3 or numerators.shape[::2] != lam.shape:
        raise ValueError(
            f"numerators: expected (channels, sums, state) matching lam {tuple(lam.shape)}, "
            f"got {tuple(numerators.shape)}"
        )
    if a.dim() != 1:
        raise ValueError(f"a: expected rank 1 (length,), got shape {tuple(a.shape)}")
    if a.requires_grad:
        raise ValueError("a: expected a constant, got a tensor that requires grad (its gradient is not computed)")
    if b.shape != (lam.shape[0], a.shape[-1]):
        raise ValueError(f"b: expected shape {(lam.shape[0], a.shape[-1])}, got {tuple(b.shape)}")
    for name, tensor in (("numerators", numerators), ("a", a), ("b", b)):
        if tensor.dtype != lam.dtype or tensor.device != lam.device:
            raise ValueError(f"{name}: expected {lam.dtype} on {lam.device} like lam, got {tensor.dtype} on {tensor.device}")
    if not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements: expected a positive int, got {chunk_elements!r}")
    if backend(lam) == "triton" and lam.dtype in TRITON_DTYPES and numerators.numel() > 0 and a.numel() > 0:
        return CauchyTriton.apply(numerators, a, b, lam)
    return CauchyReference.apply(numerators, a, b, lam, chunk_elements)
