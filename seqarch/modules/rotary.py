"""Rotary position embedding (Su et al., "RoFormer", 2021).

Pairs of features ``(x_i, x_{i + d/2})`` of each head are rotated by an angle
``position * base^(-2i/d)``, so that query-key dot products depend only on the
relative position.  Positions are absolute integers, so the recurrent (KV cache)
path rotates token t exactly as the parallel path does.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotary embedding for heads of size ``head_dim`` (even)."""

    def __init__(self, head_dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"head_dim: expected a positive even number for rotary embedding, got {head_dim}")
        if base <= 1:
            raise ValueError(f"base: expected a number > 1, got {base}")
        self.head_dim = head_dim
        self.base = float(base)

    def angles(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of shape ``(len(positions), head_dim / 2)``, computed in float64 then cast."""
        half = self.head_dim // 2
        inv_freq = self.base ** (-torch.arange(half, device=positions.device, dtype=torch.float64) / half)
        theta = positions.to(torch.float64).unsqueeze(-1) * inv_freq
        return torch.cos(theta).to(dtype), torch.sin(theta).to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``x: (batch, heads, length, head_dim)`` at integer ``positions: (length,)``."""
        cos, sin = self.angles(positions, x.dtype)
        first, second = x.chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
