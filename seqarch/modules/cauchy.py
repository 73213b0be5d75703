"""Cauchy sums of the S4 kernel, in chunks of frequencies, with an analytic backward.

S4 (Gu, Goel, Ré, ICLR 2022) evaluates its generating function at ``L`` frequencies
through Cauchy sums ``sum_n v_n / (a_l - b_l lambda_n)``.  Autograd through the
broadcast form keeps the ``(channels, state/2, L)`` reciprocal tensor and its square
alive for the backward pass: gigabytes at L = 16k.  This function computes the
sums frequency chunk by frequency chunk and recomputes each chunk's reciprocals in
the backward pass, so memory stays ``O(channels * state * chunk)``.

The computation and its analytic backward (PyTorch's complex convention) live in
:func:`seqarch.kernels.ssm_kernel.cauchy_kernel`: Triton kernels on CUDA, this chunked
form as their PyTorch twin.
"""

from __future__ import annotations

import torch

from ..kernels.ssm_kernel import CAUCHY_CHUNK_ELEMENTS, cauchy_kernel

# Complex elements of one (channels, state, chunk) block of the PyTorch path (the twin's default).
_BLOCK_ELEMENTS = CAUCHY_CHUNK_ELEMENTS


def cauchy_sums(numerators: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``out[h, j, l] = sum_n numerators[h, j, n] / (a[l] - b[h, l] * lam[h, n])``.

    Args:
        numerators: complex ``(channels, sums, state)``.
        a: complex ``(length,)``, a constant (no gradient).
        b: complex ``(channels, length)``.
        lam: complex ``(channels, state)``.
    Returns:
        complex ``(channels, sums, length)``; memory ``O(channels * state * chunk)`` in the
        forward and backward passes (:func:`seqarch.kernels.ssm_kernel.cauchy_kernel`: Triton
        on CUDA, the chunked PyTorch twin otherwise).
    """
    return cauchy_kernel(numerators, a, b, lam, chunk_elements=_BLOCK_ELEMENTS)


def cauchy_sums_flops(channels: int, sums: int, state: int, length: int) -> dict[str, int]:
    """Forward FLOPs: the products (``matmul``, 2 per complex multiply-add as FlopCounterMode
    counts them) and the rest (6 more real FLOPs per complex multiply-add; the denominators
    and reciprocals, ~14 real FLOPs per element)."""
    macs = channels * sums * state * length
    return {"matmul": 2 * macs, "other": 6 * macs + 14 * channels * state * length}
