"""Channel mixers: the position-wise MLP, its gated form (GLU) and the Monarch MLP.

``MLP`` (Vaswani et al., 2017): ``W2 act(W1 x)``.  ``gated=True`` gives the GLU
family (Shazeer, "GLU Variants Improve Transformer", 2020): ``W2 (act(W1 x) * W3 x)``.
With ``nblocks > 1`` both projections are :class:`~seqarch.modules.monarch.MonarchLinear`
(the block-diagonal channel mixer of Monarch Mixer, Fu et al., NeurIPS 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_positive_int

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}
CHANNEL_MIXERS = ("glu", "mlp", "monarch", "none")


def make_linear(in_features: int, out_features: int, *, nblocks: int = 1, bias: bool = True,
                device=None, dtype=None) -> nn.Module:
    """A dense ``nn.Linear`` (``nblocks == 1``) or a ``MonarchLinear`` with ``nblocks`` blocks."""
    if nblocks == 1:
        return nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
    from .monarch import MonarchLinear

    return MonarchLinear(in_features, out_features, nblocks=nblocks, bias=bias, device=device, dtype=dtype)


def linear_flops(layer: nn.Module, tokens: int) -> int:
    """Forward FLOPs of a dense or Monarch linear layer over ``tokens`` rows (matmul part)."""
    if isinstance(layer, nn.Linear):
        return 2 * tokens * layer.in_features * layer.out_features
    return layer.flops(tokens)


class MLP(nn.Module):
    """Position-wise feed-forward block over ``(..., d_model)``.

    Args:
        d_model: width.
        hidden: hidden width.
        gated: GLU form (three projections' worth of parameters: the first is ``2 * hidden`` wide).
        activation: ``"gelu"``, ``"silu"`` or ``"relu"``.
        nblocks: Monarch blocks of both projections (1: dense).
    """

    def __init__(self, d_model: int, hidden: int, *, gated: bool = False, activation: str = "gelu",
                 nblocks: int = 1, bias: bool = False, dropout: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("hidden", hidden)
        check_positive_int("nblocks", nblocks)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        self.gated = gated
        self.activation = activation
        factory = {"device": device, "dtype": dtype}
        self.fc1 = make_linear(d_model, hidden * (2 if gated else 1), nblocks=nblocks, bias=bias, **factory)
        self.fc2 = make_linear(hidden, d_model, nblocks=nblocks, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        act = ACTIVATIONS[self.activation]
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            h = act(gate) * value
        else:
            h = act(h)
        return self.fc2(self.dropout(h) if self.training else h)

    def flops_breakdown(self, tokens: int) -> dict[str, int]:
        """Forward FLOPs over ``tokens`` positions: ``{"matmul": projections, "other": ~4 per activation}``."""
        return {"matmul": linear_flops(self.fc1, tokens) + linear_flops(self.fc2, tokens),
                "other": tokens * self.hidden * (5 if self.gated else 4)}

    def flops(self, tokens: int) -> int:
        """Forward FLOPs over ``tokens`` positions (projections plus ~4 per activation)."""
        return sum(self.flops_breakdown(tokens).values())


class GLUOutput(nn.Module):
    """The output stage of the S4 / S4D layers: GELU, dropout, ``Linear(d, 2d)``, GLU.

    ``(..., d_model)`` -> ``(..., d_model)``; the input is cast to the projection's dtype.
    """

    def __init__(self, d_model: int, *, dropout: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, 2 * d_model, device=device, dtype=dtype)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = F.gelu(y)
        if self.training:  # the identity in eval: no module call per decoded token
            y = self.dropout(y)
        return F.glu(self.proj(y.to(self.proj.weight.dtype)), dim=-1)

    def flops(self, tokens: int) -> dict[str, int]:
        """``{"matmul": projection, "other": GELU (~8) and gate (~2) per element}``."""
        width = self.proj.in_features
        return {"matmul": linear_flops(self.proj, tokens), "other": 10 * tokens * width}


def default_hidden(kind: str, d_model: int) -> int:
    """The usual hidden width: ``4 d`` for MLPs, ``8/3 d`` (rounded up to a multiple of 8) for GLU."""
    if kind == "glu":
        return -(-(8 * d_model // 3) // 8) * 8
    return 4 * d_model


def build_channel_mixer(kind: str, d_model: int, hidden: int | None = None, *, nblocks: int = 4,
                        dropout: float = 0.0, device=None, dtype=None) -> nn.Module | None:
    """``"glu"`` (SwiGLU), ``"mlp"`` (GELU), ``"monarch"`` (GELU, Monarch projections) or ``"none"``."""
    check_choice("channel_mixer", kind, CHANNEL_MIXERS)
    if kind == "none":
        return None
    hidden = default_hidden(kind, d_model) if hidden is None else hidden
    factory = {"device": device, "dtype": dtype}
    if kind == "glu":
        return MLP(d_model, hidden, gated=True, activation="silu", dropout=dropout, **factory)
    return MLP(d_model, hidden, activation="gelu", nblocks=nblocks if kind == "monarch" else 1,
               dropout=dropout, **factory)
