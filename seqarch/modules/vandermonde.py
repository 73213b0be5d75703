"""Vandermonde products of diagonal state-space models, without the (channels, state, length) tensor.

A diagonal SSM with eigenvalues ``z_n = exp(dt A_n)`` has the convolution kernel
``K[h, l] = 2 Re(sum_n c[h, n] z[h, n]^l)`` (S4D, Gu et al. 2022).  Materialising
``z^l`` for every (channel, state, position) costs ``channels * state * length``
complex numbers of memory in the forward and again in the backward pass.  Here
the position is split as ``l = j * b + i`` with ``b ~ sqrt(length)``, so that

    K[h, j*b + i] = 2 Re( sum_n (c[h, n] z[h, n]^(j b)) * z[h, n]^i )

is one real batched matrix product of a ``(channels, length/b, 2 state)`` factor by
a ``(channels, 2 state, b)`` factor: memory ``O(channels * state * sqrt(length))``,
the same FLOPs as the direct product, done by ``torch.bmm``.  That product is the
PyTorch twin of :func:`seqarch.kernels.ssm_kernel.vandermonde_kernel`, whose Triton
kernels (on CUDA) need no ``sqrt(length)`` factor at all.
"""

from __future__ import annotations

import torch

from ..kernels.ssm_kernel import vandermonde_block_size as _block_size
from ..kernels.ssm_kernel import vandermonde_kernel

# The layer-facing name of the kernel: Triton on CUDA, the blocked product otherwise.
vandermonde_real = vandermonde_kernel


def vandermonde_real_flops(channels: int, state: int, length: int) -> int:
    """FLOPs of the matrix product in :func:`vandermonde_real` (one set of coefficients)."""
    block = _block_size(length)
    n_blocks = -(-length // block)
    return 2 * channels * n_blocks * block * 2 * state


def decay_powers(log_z: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The powers :func:`decayed_sum` reads for ``length`` positions, a function of ``log_z``
    ``(channels, state)`` alone: ``z^i`` for ``i`` in a block ``(channels, state, block)`` and
    ``z^(j block)`` ``(channels, state, n_blocks)``."""
    block = _block_size(length)
    n_blocks = -(-length // block)
    real_dtype = log_z.real.dtype
    steps_in = torch.arange(block, device=log_z.device, dtype=real_dtype)
    steps_out = torch.arange(n_blocks, device=log_z.device, dtype=real_dtype) * block
    return torch.exp(log_z.unsqueeze(-1) * steps_in), torch.exp(log_z.unsqueeze(-1) * steps_out)


def decayed_sum(x: torch.Tensor, log_z: torch.Tensor, weight: torch.Tensor,
                powers: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The state of a diagonal SSM after reading a sequence: ``sum_l z^(L-1-l) weight x_l``.

    Args:
        x: real ``(batch, channels, length)`` inputs.
        log_z: complex ``(channels, state)``.
        weight: complex ``(channels, state)`` input matrix (``B-bar``).
        powers: :func:`decay_powers` of ``log_z`` and the length, when the caller keeps them (complex
            exponentials are most of the work, and they depend on the parameters only), else made here.
    Returns:
        complex ``(batch, channels, state)``.
    """
    length = x.shape[-1]
    inner, outer = decay_powers(log_z, length) if powers is None else powers
    block, n_blocks = inner.shape[-1], outer.shape[-1]
    # Reverse time so the power is the distance to the end, then pad to whole blocks.
    reversed_x = torch.flip(x, dims=[-1]).to(log_z.dtype)
    reversed_x = torch.nn.functional.pad(reversed_x, (0, n_blocks * block - length))
    blocks = reversed_x.reshape(*x.shape[:-1], n_blocks, block)
    partial = torch.einsum("bhji,hni->bhnj", blocks, inner)
    return weight * (partial * outer).sum(-1)
