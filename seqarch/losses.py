"""The training losses of seqarch models, and the target id that takes no loss.

Both models' ``loss`` methods and the Lightning module use these, so a model trained by
``seqarch train`` and one trained by a researcher's own loop optimise the same thing.
This module imports nothing of seqarch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Targets that take no loss (torch's own default ``ignore_index``, so data from elsewhere agrees).
IGNORE_INDEX = -100


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits: (batch, length, vocab)`` against ``targets: (batch, length)``;
    positions labelled :data:`IGNORE_INDEX` are left out. Computed in float32 whatever the logits' dtype."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits: (batch, classes)`` against ``labels: (batch,)``, in float32."""
    return F.cross_entropy(logits.float(), labels)
