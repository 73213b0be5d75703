"""The optimiser recipe shared by every architecture: AdamW with the layers' own
parameter groups, linear warmup then cosine decay.

Layers mark parameters that need their own treatment with an ``_optim`` dict
(S4/S4D ``A`` and ``dt``, Hyena filters: ``{"lr_scale": s, "weight_decay": 0.0}``,
a learning rate of ``s`` times the run's and no weight decay). The scale is a
multiple of ``train.lr``, never an absolute rate, so a learning-rate sweep moves
every parameter of the model. Biases, norms and embeddings get no weight decay,
as in GPT-2/Chinchilla recipes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainSection


def _default_decay(name: str, param: nn.Parameter) -> bool:
    return param.dim() >= 2 and "embedding" not in name


HINT_KEYS = ("lr_scale", "weight_decay")


def _hint(name: str, param: nn.Parameter) -> dict:
    hint = getattr(param, "_optim", None) or {}
    unknown = sorted(set(hint) - set(HINT_KEYS))
    if unknown:
        raise ValueError(f"{name}._optim: expected keys among {list(HINT_KEYS)} (the learning rate as a multiple "
                         f"of train.lr: 'lr_scale'), got {unknown}")
    return hint


def parameter_groups(model: nn.Module, *, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: one per distinct ``_optim`` hint, plus decayed and non-decayed defaults.

    A hint's ``lr_scale`` multiplies the run's ``lr`` and its ``weight_decay`` overrides the
    run's; every group records its ``lr_scale`` and ``base_lr`` so the schedule scales each
    group by the same factor. A hint with other keys (an absolute ``lr``) is a ValueError.
    """
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        hint = _hint(name, param)
        scale = float(hint.get("lr_scale", 1.0))
        settings = {
            "lr": lr * scale,
            "lr_scale": scale,
            "weight_decay": float(hint.get("weight_decay", weight_decay if _default_decay(name, param) else 0.0)),
        }
        key = tuple(sorted(settings.items()))
        group = groups.setdefault(key, {"params": [], "names": [], **settings, "base_lr": settings["lr"]})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def describe_groups(groups: list[dict]) -> str:
    """One line for a report: each group's peak learning rate, weight decay and size, e.g.
    ``lr 0.003, wd 0.1: 12 tensors, 1.2e+05 numbers; lr 0.0015 (0.5 x lr), wd 0: 6 tensors, ...``."""
    parts = []
    for group in groups:
        scale = "" if group["lr_scale"] == 1.0 else f" ({group['lr_scale']:g} x lr)"
        numbers = sum(p.numel() for p in group["params"])
        parts.append(f"lr {group['lr']:.3g}{scale}, wd {group['weight_decay']:g}: {len(group['params'])} tensors, "
                     f"{numbers:.3g} numbers")
    return "; ".join(parts)


def describe_learning_rates(model_config, lr: float, weight_decay: float) -> str:
    """:func:`describe_groups` of the model ``model_config`` describes (built on the meta device)."""
    from ..budget import build_meta_model

    return describe_groups(parameter_groups(build_meta_model(model_config), lr=lr, weight_decay=weight_decay))


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
        [{k: v for k, v in g.items() if k not in ("names", "lr_scale")} for g in groups], lr=lr, betas=train.betas
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(
            step, total_steps=train.steps, warmup_steps=train.warmup_steps, min_ratio=train.min_lr_ratio,
        ),
    )
    return optimizer, schedule
