"""Sequence autoencoder: the trunk reads the sequence, and the whole sequence is rebuilt from its last
position alone. MAD's compression task (Poli et al., 2024, arXiv 2403.17844) trains this shape: the
last position must hold all the tokens before it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..flops import step_flops
from ..losses import token_loss
from ..modules.norm import build_norm
from .backbone import Backbone, num_params
from .config import ModelConfig
from .language_model import LanguageModel


def sinusoidal_positions(length: int, dim: int, *, device=None, dtype=None) -> torch.Tensor:
    """``(length, dim)`` fixed sine/cosine position features (Vaswani et al., 2017)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table.to(dtype) if dtype is not None else table


class SequenceAutoencoder(nn.Module):
    """``(batch, length)`` ids -> ``(batch, length, vocab_size)`` logits of every input token, each
    decoded from the trunk's features at the last position plus that position's sinusoidal code, by a
    non-expanding two-layer GELU MLP (MAD's decoder), then the output head.
    """

    def __init__(self, config: ModelConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        d = config.d_model
        self.backbone = Backbone(config, **factory)
        self.decoder = nn.Sequential(build_norm(config.norm, d, **factory), nn.Linear(d, d, **factory), nn.GELU(),
                                     build_norm(config.norm, d, **factory), nn.Linear(d, d, **factory), nn.GELU(),
                                     build_norm(config.norm, d, **factory))
        self.head = nn.Linear(d, config.vocab_size, bias=False, **factory)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        code = self.backbone(tokens)[:, -1:]  # (batch, 1, d_model): all the decoder sees
        positions = sinusoidal_positions(tokens.shape[1], self.config.d_model, device=code.device, dtype=code.dtype)
        return self.head(self.decoder(code + positions))

    loss_from_logits = staticmethod(token_loss)
    scored = staticmethod(LanguageModel.scored)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``targets: (batch, length)`` (-100 takes no loss)."""
        return token_loss(self(tokens), targets)

    def num_params(self) -> int:
        return num_params(self)

    def flops_per_token(self, length: int, batch_size: int = 1, attention: str = "causal") -> float:
        """Forward FLOPs per token of a step on ``(batch_size, length)``: the trunk, then the decoder and
        output head (:meth:`head_flops`), with the once-per-step work shared by the batch
        (:func:`seqarch.flops.step_flops`)."""
        return step_flops(self, batch_size, length, attention).forward_per_token

    def head_flops(self, length: int) -> int:
        """Forward FLOPs after the trunk for one sequence: the decoder's two ``d x d`` layers and the
        ``d x vocab_size`` head, at each of the ``length`` decoded positions."""
        d = self.config.d_model
        return 2 * 2 * d * d * length + 2 * d * self.config.vocab_size * length
