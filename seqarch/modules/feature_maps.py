"""Feature maps of linear attention: ``phi(q) . phi(k)`` stands in for the softmax's ``exp(q . k)``.

- ``"identity"``: ``phi(x) = x`` (signed scores: use it without the normaliser);
- ``"elu"``: ``phi(x) = elu(x) + 1`` (Katharopoulos et al., "Transformers are RNNs", 2020), positive;
- ``"taylor"``: the second-order Taylor map of Based (Arora et al., "Simple linear attention language
  models balance the recall-throughput tradeoff", 2024), ``phi(x) = [1, x / d^(1/4), vec(x x^T) / sqrt(2 d)]``
  so that ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with ``s = q . k / sqrt(d)``, the expansion of
  ``exp(s)`` (always ``>= 1/2``).  It maps ``d`` features to ``1 + d + d^2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..checks import check_choice

FEATURE_MAPS = ("identity", "elu", "taylor")


def feature_dim(name: str, dim: int) -> int:
    """Width of ``phi(x)`` for ``x`` of ``dim`` features."""
    check_choice("feature_map", name, FEATURE_MAPS)
    return 1 + dim + dim * dim if name == "taylor" else dim


def feature_map(name: str, x: torch.Tensor) -> torch.Tensor:
    """``phi(x)`` over the last dimension: ``(..., dim)`` -> ``(..., feature_dim(name, dim))``."""
    check_choice("feature_map", name, FEATURE_MAPS)
    if name == "identity":
        return x
    if name == "elu":
        return F.elu(x) + 1
    dim = x.shape[-1]
    square = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2 * dim)
    return torch.cat([torch.ones_like(x[..., :1]), x / dim ** 0.25, square], dim=-1)


def feature_map_flops(name: str, dim: int) -> int:
    """Elementwise FLOPs of ``phi`` on one vector of ``dim`` features."""
    check_choice("feature_map", name, FEATURE_MAPS)
    return {"identity": 0, "elu": 3 * dim, "taylor": dim + 2 * dim * dim}[name]
