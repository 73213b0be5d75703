"""Cauchy sums of the S4 kernel, in chunks of frequencies, with an analytic backward.

S4 (Gu, Goel, Ré, ICLR 2022) evaluates its generating function at ``L`` frequencies
through Cauchy sums ``sum_n v_n / (a_l - b_l lambda_n)``.  Autograd through the
broadcast form keeps the ``(channels, state/2, L)`` reciprocal tensor and its square
alive for the backward pass: gigabytes at L = 16k.  This function computes the
sums frequency chunk by frequency chunk and recomputes each chunk's reciprocals in
the backward pass, so memory stays ``O(channels * state * chunk)``.

Complex gradients follow PyTorch's convention (``grad = dL/d conj(z)``): for the
holomorphic ``out = sum_n v_n r_n`` with ``r = 1 / d``, ``d = a - b lambda``:
``grad_v = sum_l g conj(r)``, ``grad_d = -(sum_j conj(v) g) conj(r)^2``,
``grad_b = -sum_n grad_d conj(lambda)``, ``grad_lambda = -sum_l grad_d conj(b)``
(``d = a - b lambda`` contributes the minus signs, which cancel ``grad_d``'s).
"""

from __future__ import annotations

import torch

# Complex elements of one (channels, state, chunk) block: 2^22 complex64 is 32 MiB.
_BLOCK_ELEMENTS = 1 << 22


def _chunk_size(channels: int, state: int, length: int) -> int:
    return max(1, min(length, _BLOCK_ELEMENTS // max(1, channels * state)))


class _CauchySums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, numerators, a, b, lam):
        channels, _, state = numerators.shape
        length = a.shape[-1]
        chunk = _chunk_size(channels, state, length)
        out = []
        for start in range(0, length, chunk):
            stop = min(length, start + chunk)
            r = 1 / (a[start:stop] - b[:, None, start:stop] * lam[..., None])  # (H, m, c)
            out.append(numerators @ r)  # (H, J, c)
        ctx.save_for_backward(numerators, a, b, lam)
        return torch.cat(out, dim=-1)

    @staticmethod
    def backward(ctx, grad_out):
        numerators, a, b, lam = ctx.saved_tensors
        channels, _, state = numerators.shape
        length = a.shape[-1]
        chunk = _chunk_size(channels, state, length)
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
        return grad_num, None, grad_b, grad_lam


def cauchy_sums(numerators: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``out[h, j, l] = sum_n numerators[h, j, n] / (a[l] - b[h, l] * lam[h, n])``.

    Args:
        numerators: complex ``(channels, sums, state)``.
        a: complex ``(length,)``, a constant (no gradient).
        b: complex ``(channels, length)``.
        lam: complex ``(channels, state)``.
    Returns:
        complex ``(channels, sums, length)``; memory ``O(channels * state * chunk)`` in the
        forward and backward passes.
    """
    if numerators.dim() != 3 or lam.dim() != 2 or numerators.shape[::2] != lam.shape:
        raise ValueError(
            f"numerators: expected (channels, sums, state) matching lam {tuple(lam.shape)}, "
            f"got {tuple(numerators.shape)}"
        )
    if b.shape != (lam.shape[0], a.shape[-1]):
        raise ValueError(f"b: expected shape {(lam.shape[0], a.shape[-1])}, got {tuple(b.shape)}")
    return _CauchySums.apply(numerators, a, b, lam)


def cauchy_sums_flops(channels: int, sums: int, state: int, length: int) -> dict[str, int]:
    """Forward FLOPs: the products (``matmul``, 2 per complex multiply-add as FlopCounterMode
    counts them) and the rest (6 more real FLOPs per complex multiply-add; the denominators
    and reciprocals, ~14 real FLOPs per element)."""
    macs = channels * sums * state * length
    return {"matmul": 2 * macs, "other": 6 * macs + 14 * channels * state * length}
