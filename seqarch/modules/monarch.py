"""Monarch linear layer: a structured ``in -> out`` map in O(n^1.5) at order 2.

Dao et al., "Monarch: Expressive Structured Matrices for Efficient and Accurate
Training" (ICML 2022); Fu et al., "Monarch Mixer" (NeurIPS 2023, arXiv 2310.12109).
A square order-2 Monarch matrix is ``M = P L P^T R`` with ``R`` and ``L``
block-diagonal (``nblocks`` blocks each) and ``P`` the stride permutation, i.e. the
transpose of a ``(nblocks, n / nblocks)`` grid.  At ``nblocks = sqrt(n)`` both
factors hold ``n^1.5`` numbers and cost ``n^1.5`` multiplies per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_divides, check_positive_int
from ..kernels.monarch_matmul import monarch_matmul


def monarch_mid_features(in_features: int, out_features: int, nblocks: int) -> int:
    """Width of the hidden vector between the two block-diagonal factors.

    ``max(in_features, out_features)`` rounded up to a multiple of ``nblocks**2``: then
    each of the ``nblocks`` hidden blocks has at least ``nblocks`` entries and, after
    the stride permutation, every second-factor block reads the same number of
    entries from every first-factor block, so every output depends on every input.
    """
    square = nblocks * nblocks
    return -(-max(in_features, out_features) // square) * square


class MonarchLinear(nn.Module):
    """Monarch (order-2, block-diagonal x permutation x block-diagonal) linear layer.

    ``x: (..., in_features) -> (..., out_features)``.  Rectangular shapes follow the
    M2 / fly code: the first factor ``R`` has ``nblocks`` blocks mapping
    ``in_features / nblocks -> mid / nblocks`` (``mid`` from
    :func:`monarch_mid_features`), the hidden vector is permuted by the stride
    permutation (hidden entry ``j`` goes to second-factor block ``j mod nblocks``),
    and the second factor ``L`` has ``nblocks`` blocks mapping
    ``mid / nblocks -> out_features / nblocks``.  This is ``L P^T R``; the
    paper's final ``P`` only relabels outputs, which a learned ``L`` absorbs.

    ``nblocks = 1`` is an ordinary dense layer holding one ``(out, in)`` weight; otherwise
    the product runs through :func:`seqarch.kernels.monarch_matmul.monarch_matmul` (a fused
    Triton kernel on CUDA tensors, its ``torch.bmm`` twin elsewhere).

    Parameters: ``blkdiag1`` ``(nblocks, mid / nblocks, in / nblocks)`` and
    ``blkdiag2`` ``(nblocks, out / nblocks, mid / nblocks)`` (or ``weight`` when
    ``nblocks = 1``), and ``bias`` ``(out_features,)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int = 4,
        *,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.nblocks = check_positive_int("nblocks", nblocks)
        check_divides("nblocks", nblocks, "in_features", in_features)
        check_divides("nblocks", nblocks, "out_features", out_features)
        if not isinstance(bias, bool):
            raise ValueError(f"bias: expected a bool, got {bias!r}")
        factory = {"device": device, "dtype": dtype}
        if nblocks == 1:
            self.mid_features = in_features
            self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        else:
            self.mid_features = monarch_mid_features(in_features, out_features, nblocks)
            mid_block = self.mid_features // nblocks
            self.blkdiag1 = nn.Parameter(torch.empty(nblocks, mid_block, in_features // nblocks, **factory))
            self.blkdiag2 = nn.Parameter(torch.empty(nblocks, out_features // nblocks, mid_block, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise so that outputs have ``nn.Linear``'s variance (``Var(x) / 3``).

        nn.Linear draws ``U(-1/sqrt(in), 1/sqrt(in))``: entries of variance
        ``1 / (3 in)``.  Here ``R`` preserves variance (``U(+-sqrt(3 / fan_in))``)
        and ``L`` is drawn like nn.Linear (``U(+-1/sqrt(fan_in))``), so the product
        scales variance by 1/3 and each entry of the dense matrix (a sum of
        ``mid / nblocks**2`` products) again has variance ``1 / (3 in)``.
        """
        with torch.no_grad():
            if self.nblocks == 1:
                bound = 1.0 / math.sqrt(self.in_features)
                self.weight.uniform_(-bound, bound)
            else:
                bound1 = math.sqrt(3.0 / self.blkdiag1.shape[-1])
                bound2 = 1.0 / math.sqrt(self.blkdiag2.shape[-1])
                self.blkdiag1.uniform_(-bound1, bound1)
                self.blkdiag2.uniform_(-bound2, bound2)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-bound, bound)

    def _multiply(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (tokens, in_features)`` -> ``(tokens, out_features)``, without the bias."""
        if self.nblocks == 1:
            return F.linear(x, self.weight)
        # Under autocast, bmm would run in the autocast dtype; the kernel wants one dtype for all.
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return monarch_matmul(x.to(dtype), self.blkdiag1.to(dtype), self.blkdiag2.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (..., in_features)`` -> ``(..., out_features)``."""
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape (..., in_features={self.in_features}), got {shape}")
        lead = x.shape[:-1]
        y = self._multiply(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def dense_matrix(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix this layer multiplies by (no bias)."""
        ref = self.weight if self.nblocks == 1 else self.blkdiag1
        eye = torch.eye(self.in_features, device=ref.device, dtype=ref.dtype)
        return self._multiply(eye).t()

    def flops(self, tokens: int) -> int:
        """Forward FLOPs of the matrix products for ``tokens`` rows (bias adds excluded).

        ``2 * tokens * (multiplies of R + multiplies of L)``, which is what
        ``torch.utils.flop_counter.FlopCounterMode`` counts for :meth:`forward`.
        """
        check_positive_int("tokens", tokens)
        if self.nblocks == 1:
            return 2 * tokens * self.in_features * self.out_features
        mults = self.mid_features * (self.in_features + self.out_features) // self.nblocks
        return 2 * tokens * mults

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"nblocks={self.nblocks}, mid_features={self.mid_features}, bias={self.bias is not None}"
        )
