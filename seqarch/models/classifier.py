"""Sequence classifier: the model trunk, pooled over positions, then a linear head (LRA-style)."""

from __future__ import annotations

import torch
from torch import nn

from ..flops import step_flops
from ..losses import class_loss
from .backbone import Backbone, num_params
from .config import ModelConfig


class SequenceClassifier(nn.Module):
    """``(batch, length)`` ids (and an optional ``(batch, length)`` bool mask of real tokens)
    -> ``(batch, num_classes)`` logits, pooled by ``config.pool`` (mean over real tokens, or
    the last real token)."""

    def __init__(self, config: ModelConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        if config.num_classes is None:
            raise ValueError("config.num_classes: expected a positive integer for a SequenceClassifier, got None")
        self.config = config
        self.backbone = Backbone(config, device=device, dtype=dtype)
        self.head = nn.Linear(config.d_model, config.num_classes, device=device, dtype=dtype)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        features = self.backbone(tokens)
        if mask is None:
            mask = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        elif mask.shape != tokens.shape:
            raise ValueError(f"mask: expected shape {tuple(tokens.shape)} like tokens, got {tuple(mask.shape)}")
        weights = mask.to(features.dtype)
        counts = weights.sum(1).clamp_min(1)
        if self.config.pool == "mean":
            pooled = (features * weights.unsqueeze(-1)).sum(1) / counts.unsqueeze(-1)
        else:
            last = (counts - 1).long()
            pooled = features[torch.arange(features.shape[0], device=features.device), last]
        return self.head(pooled)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of ``labels: (batch,)``."""
        return self.loss_from_logits(self(tokens, mask), labels)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """:meth:`loss` of logits already computed (a trainer that also scores them calls this)."""
        return class_loss(logits, labels)

    @staticmethod
    def scored(labels: torch.Tensor) -> torch.Tensor:
        """Every label takes a loss: an all-True bool tensor of their shape."""
        return torch.ones_like(labels, dtype=torch.bool)

    def num_params(self) -> int:
        return num_params(self)

    def flops_per_token(self, length: int, batch_size: int = 1, attention: str = "causal") -> float:
        """Forward FLOPs per token of a step on ``(batch_size, length)``: blocks plus the head, the
        once-per-step work shared by the batch (:func:`seqarch.flops.step_flops`)."""
        return step_flops(self, batch_size, length, attention).forward_per_token

    def head_flops(self, length: int) -> int:
        """Forward FLOPs of the head for one sequence: one ``d_model x num_classes`` product (pooling is free)."""
        return 2 * self.config.d_model * self.config.num_classes
