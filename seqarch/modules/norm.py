"""Normalisation layers over the last dimension: RMSNorm and LayerNorm, by name; the gated RMSNorm of Mamba-2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_divides, check_positive_int
from ..precision import compute_dtype

NORMS = ("rmsnorm", "layernorm")


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019) over ``(..., dim)``; computed in float32 or wider."""

    def __init__(self, dim: int, *, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm gives the numbers of x * rsqrt(mean(x^2) + eps) * weight written out, in fewer
        # calls (a decoding step runs two norms per layer); with the weight fused only where x is
        # already float32 or wider, since it would otherwise scale before the cast back, not after.
        if x.dtype == self.weight.dtype and x.dtype in (torch.float32, torch.float64):
            return F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)
        work = x.to(compute_dtype(x.dtype))
        return F.rms_norm(work, (work.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x * SiLU(z))`` over ``(..., dim)``, normalised in groups of ``group_size`` features
    (default: all), as before Mamba-2's output projection (Dao & Gu, "Transformers are SSMs", 2024).

    Per-group statistics keep the norm independent of how many groups (``ngroups``) the layer has,
    so a tensor-parallel split of the groups gives the same result.  Computed in float32 or wider.
    """

    def __init__(self, dim: int, *, group_size: int | None = None, eps: float = 1e-5, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.group_size = dim if group_size is None else check_positive_int("group_size", group_size)
        check_divides("group_size", self.group_size, "dim", dim)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x, z: (..., dim)`` -> ``(..., dim)`` in ``x``'s dtype."""
        work = compute_dtype(x.dtype)
        gated = x.to(work) * F.silu(z.to(work))
        if self.group_size == self.dim and x.dtype == work == self.weight.dtype:  # one group, no casts:
            return F.rms_norm(gated, (self.dim,), self.weight, eps=self.eps)  # the weight fused, 3 calls fewer
        grouped = gated.unflatten(-1, (-1, self.group_size))
        normed = F.rms_norm(grouped, (self.group_size,), eps=self.eps)
        return normed.flatten(-2).to(x.dtype) * self.weight

    def flops(self, length: int) -> int:
        """Forward FLOPs for ``length`` rows: the gate (SiLU ~ 5, product), the mean square, scale, weight."""
        return 10 * length * self.dim


def build_norm(name: str, dim: int, *, device=None, dtype=None) -> nn.Module:
    """``"rmsnorm"`` or ``"layernorm"`` over ``dim`` features."""
    check_choice("norm", name, NORMS)
    if name == "rmsnorm":
        return RMSNorm(dim, device=device, dtype=dtype)
    return nn.LayerNorm(dim, device=device, dtype=dtype)
