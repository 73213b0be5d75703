"""The optimiser recipe shared by every architecture: AdamW with the layers' own
parameter groups, linear warmup then cosine decay.

Layers mark parameters that need their own treatment with an ``_optim`` dict
(S4/S4D ``A`` and ``dt``, Hyena filters: a smaller learning rate and no weight
decay, as the mixer contract says). Biases, norms and embeddings get no
weight decay, as in GPT-2/Chinchilla recipes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainSection


def _default_decay(name: str, param: nn.Parameter) -> bool:
    return param.dim() >= 2 and "embedding" not in name


def parameter_groups(model: nn.Module, *, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: one per distinct ``_optim`` hint, plus decayed and non-decayed defaults.

    A hint's ``lr`` and ``weight_decay`` override the run's; every group records its
    ``base_lr`` so the schedule scales each group by the same factor.
    """
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        hint = getattr(param, "_optim", None) or {}
        settings = {
            "lr": float(hint.get("lr", lr)),
            "weight_decay": float(hint.get("weight_decay", weight_decay if _default_decay(name, param) else 0.0)),
        }
        key = tuple(sorted(settings.items()))
        group = groups.setdefault(key, {"params": [], "names": [], **settings, "base_lr": settings["lr"]})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate factor at ``step``: linear warmup to 1, then cosine to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, train: TrainSection,
                    lr: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`parameter_groups` and its per-step warmup + cosine schedule."""
    groups = parameter_groups(model, lr=lr, weight_decay=train.weight_decay)
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "names"} for g in groups], lr=lr, betas=train.betas
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(
            step, total_steps=train.steps, warmup_steps=train.warmup_steps, min_ratio=train.min_lr_ratio,
        ),
    )
    return optimizer, schedule
