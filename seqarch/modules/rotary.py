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
        self._tables: dict = {}

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

    def tables(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos2, sin2)``: ``(capacity >= length, head_dim)`` tables of positions ``0, 1, ...``:
        ``cos2 = [cos, cos]``, ``sin2 = [-sin, sin]`` (the :meth:`angles` values).  One table per
        device and dtype, made once and regrown (to a power of two, at least 2048) only when a
        longer one is asked for, not per call or per token."""
        # No parameters behind them: a plain memo.  Inference-mode tensors are kept apart (autograd
        # may not save them).  A compiled graph reads a memo made before it (its only guard is
        # ``length <= capacity``, so a decoding step at a new position compiles nothing new) and
        # computes a missing one itself.  (Dynamo cannot trace the inference-mode query: a traced call
        # reads the ordinary table.)
        compiling = torch.compiler.is_compiling()
        key = (device, dtype, not compiling and torch.is_inference_mode_enabled())
        tables = self._tables.get(key)
        if tables is None or tables[0].shape[0] < length:
            capacity = max(2048, 1 << max(0, length - 1).bit_length())
            tables = self._doubled(*self.angles(torch.arange(capacity, device=device), dtype))
            if not compiling:
                self._tables[key] = tables
        return tables

    @staticmethod
    def _doubled(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)

    def rotate(self, x: torch.Tensor, start: int | torch.Tensor, dim: int | None = -2) -> torch.Tensor:
        """Rotate ``x`` at positions ``start, start + 1, ...`` along ``dim`` (a negative index:
        ``-2`` for ``(batch, heads, length, head_dim)``, ``-3`` for ``(batch, length, heads,
        head_dim)``; None: ``x (..., head_dim)`` holds the one position ``start``, as a decoding
        step's); equal to :meth:`forward` at those positions.

        ``x cos2 + roll(x) sin2`` from the cached tables (``roll`` by half a head swaps the
        halves): three elementwise ops and no float64 work per call.  ``start`` may be a device
        tensor ``(1,)`` (int64) for one token: the angles are then computed from it on the device
        (in float64, the tables' values exactly), so a CUDA graph of the step replays at every
        position without a table bound."""
        length = 1 if dim is None else x.shape[dim]
        if isinstance(start, torch.Tensor):
            if length != 1 or start.shape != (1,):
                raise ValueError(f"start: a device position rotates one token; expected a (1,) tensor and one "
                                 f"position along dim, got shape {tuple(start.shape)} and {length} positions")
            return self._turn(x, *self._doubled(*self.angles(start, x.dtype)))
        cos2, sin2 = self.tables(start + length, x.device, x.dtype)
        if dim is None:
            cos2, sin2 = cos2[start], sin2[start]
        else:
            shape = (length, *(1,) * (-dim - 2), self.head_dim)
            cos2, sin2 = cos2[start:start + length].view(shape), sin2[start:start + length].view(shape)
        return self._turn(x, cos2, sin2)

    def rotate_at(self, x: torch.Tensor, position: torch.Tensor, capacity: int) -> torch.Tensor:
        """Rotate ``x (..., head_dim)``, one token, at the position held on the device by ``position: (1,)``
        (int64, below ``capacity``): read there, not in Python, so a CUDA graph of the step replays at
        every position.  Equal to :meth:`rotate` at that position."""
        cos2, sin2 = self.tables(capacity, x.device, x.dtype)
        return self._turn(x, cos2.index_select(0, position), sin2.index_select(0, position))

    def _turn(self, x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x * cos2, x.roll(self.head_dim // 2, -1), sin2)
