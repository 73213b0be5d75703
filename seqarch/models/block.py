"""The pre-norm residual block: ``x + mixer(norm(x))``, then ``x + channel_mixer(norm(x))``."""

from __future__ import annotations

import torch
from torch import nn

from ..mixers.base import State, build_mixer
from ..modules.mlp import build_channel_mixer
from ..modules.norm import build_norm
from .config import ModelConfig


class ResidualBlock(nn.Module):
    """One layer of a model: a sequence mixer and a channel mixer, each pre-normed and residual.

    ``forward``: ``(batch, length, d_model)`` -> same; ``step``: ``(batch, d_model)`` -> same.
    ``layer_idx`` (the block's index in its model) is passed on to the mixer.
    """

    def __init__(self, config: ModelConfig, mixer_name: str, *, layer_idx: int | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.mixer_norm = build_norm(config.norm, config.d_model, **factory)
        self.mixer = build_mixer(mixer_name, config.d_model, **config.options_for(mixer_name), layer_idx=layer_idx,
                                 **factory)
        self.channel = build_channel_mixer(config.channel_mixer, config.d_model, config.d_ff,
                                           nblocks=config.monarch_blocks, **factory)
        self.channel_norm = build_norm(config.norm, config.d_model, **factory) if self.channel is not None else None
        self.dropout = nn.Dropout(config.dropout)

    def _channel(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is None:
            return x
        return x + self.dropout(self.channel(self.channel_norm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.mixer(self.mixer_norm(x)))
        return self._channel(x)

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        y, state = self.mixer.prefill(self.mixer_norm(x), state)
        return self._channel(x + self.dropout(y)), state

    def step(self, x_t: torch.Tensor, state: State, *, check: bool = True) -> tuple[torch.Tensor, State]:
        """One token ``x_t: (batch, d_model)``; ``check=False`` skips the mixer's input and state checks
        (a decoding loop whose states came from ``init_state`` / ``prefill`` checks once, not every token)."""
        x_mixer = self.mixer_norm(x_t)
        y, state = self.mixer.step(x_mixer, state) if check else self.mixer._step(x_mixer, state)
        if self.training:  # dropout is the identity in eval: skip its module call on every token
            return self._channel(x_t + self.dropout(y)), state
        x_t = x_t + y
        return x_t + self.channel(self.channel_norm(x_t)) if self.channel is not None else x_t, state

    def flops(self, length: int) -> int:
        """Forward FLOPs for one sequence (mixer plus channel mixer; norms are negligible)."""
        channel = self.channel.flops(length) if self.channel is not None else 0
        return self.mixer.flops(length) + channel
