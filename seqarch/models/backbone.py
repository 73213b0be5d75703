"""The shared trunk of every model: token embedding, residual blocks, final norm."""

from __future__ import annotations

import torch
from torch import nn

from ..mixers.base import State
from ..modules.norm import build_norm
from .block import ResidualBlock
from .config import ModelConfig


def check_tokens(tokens: torch.Tensor, config: ModelConfig, argument: str = "tokens") -> None:
    """Raise a ValueError unless ``tokens`` is an integer ``(batch, length)`` tensor of valid ids."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"{argument}: expected an integer tensor of shape (batch, length), got {shape}")
    if tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"{argument}: expected integer token ids, got dtype {tokens.dtype}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        raise ValueError(
            f"{argument}: expected ids in [0, vocab_size={config.vocab_size}), got range "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )


class Backbone(nn.Module):
    """Embedding -> ``n_layers`` :class:`ResidualBlock` -> norm.

    ``(batch, length)`` token ids -> ``(batch, length, d_model)``.
    """

    def __init__(self, config: ModelConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.embedding = nn.Embedding(config.vocab_size, config.d_model, **factory)
        nn.init.normal_(self.embedding.weight, std=config.d_model ** -0.5)
        self.blocks = nn.ModuleList(ResidualBlock(config, name, layer_idx=i, **factory)
                                    for i, name in enumerate(config.layer_mixers))
        self.norm = build_norm(config.norm, config.d_model, **factory)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.config)
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def init_state(self, batch_size: int, *, max_length: int | None = None) -> list[State]:
        """One recurrent state per layer."""
        ref = self.embedding.weight
        return [block.mixer.init_state(batch_size, device=ref.device, dtype=ref.dtype, max_length=max_length)
                for block in self.blocks]

    def prefill(self, tokens: torch.Tensor, states: list[State]) -> tuple[torch.Tensor, list[State]]:
        check_tokens(tokens, self.config)
        x = self.embedding(tokens)
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block.prefill(x, state)
            new_states.append(state)
        return self.norm(x), new_states

    def step(self, token: torch.Tensor, states: list[State], *, check: bool = True
             ) -> tuple[torch.Tensor, list[State]]:
        """``token: (batch,)`` ids -> ``(batch, d_model)`` features and the new states; ``check=False``
        skips every layer's input and state checks (for states this backbone made, token after token)."""
        x = self.embedding(token)
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state, check=check)
            new_states.append(state)
        return self.norm(x), new_states

    def flops(self, length: int) -> int:
        """Forward FLOPs of the blocks for one sequence."""
        return sum(block.flops(length) for block in self.blocks)


def num_params(module: nn.Module) -> int:
    """Parameters of ``module``, counting tied (shared) tensors once."""
    return sum(p.numel() for p in module.parameters())
