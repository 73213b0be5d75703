"""Normalisation layers over the last dimension: RMSNorm and LayerNorm, by name."""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_choice

NORMS = ("rmsnorm", "layernorm")


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019) over ``(..., dim)``; computed in float32 or wider."""

    def __init__(self, dim: int, *, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = work * torch.rsqrt(work.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def build_norm(name: str, dim: int, *, device=None, dtype=None) -> nn.Module:
    """``"rmsnorm"`` or ``"layernorm"`` over ``dim`` features."""
    check_choice("norm", name, NORMS)
    if name == "rmsnorm":
        return RMSNorm(dim, device=device, dtype=dtype)
    return nn.LayerNorm(dim, device=device, dtype=dtype)
