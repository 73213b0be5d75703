"""``seqarch compare``: every listed architecture at one matched budget, same data,
same seeds, same optimiser recipe; optionally a learning-rate sweep per architecture
with the best run kept.

Budget (the config's ``budget`` section):
- ``params: N``: each architecture is resized (width, or depth with
  ``match_by: depth``) by :func:`seqarch.budget.match_budget` to N parameters;
- ``flops: C``: the whole run's training FLOPs. With ``steps x batch x seq_len``
  tokens fixed, that is ``C / (3 x tokens)`` forward FLOPs per token, which the
  solver meets by resizing each architecture.
Without a budget, every architecture is trained at the config's own size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..budget import TRAINING_FLOPS_PER_FORWARD, BudgetMatch, match_budget
from ..data import DataBundle
from ..models import ModelConfig
from .config import ConfigError, architecture_entries
from .run import model_config_for, primary_metric, train_run

log = logging.getLogger(__name__)

# Every compared model must be this close to the budget (the acceptance bound of a matched comparison).
BUDGET_TOLERANCE = 0.02


def run_tokens(config: dict, bundle: DataBundle) -> int:
    train = config["train"]
    return int(train["steps"]) * int(train["batch_size"]) * bundle.seq_len


def match_architecture(config: dict, bundle: DataBundle, model_config: ModelConfig, name: str) -> BudgetMatch | None:
    """Resize ``model_config`` to the config's budget; ``None`` without a budget.

    Raises :class:`ConfigError` when no size comes within 2% of the budget.
    """
    budget = config["budget"]
    by = budget.get("match_by", "width")
    try:
        if "params" in budget:
            match = match_budget(model_config, params=float(budget["params"]), length=bundle.seq_len, by=by)
        elif "flops" in budget:
            per_token = float(budget["flops"]) / (TRAINING_FLOPS_PER_FORWARD * run_tokens(config, bundle))
            match = match_budget(model_config, flops_per_token=per_token, length=bundle.seq_len, by=by)
        else:
            return None
    except ValueError as error:
        raise ConfigError(f"budget: architecture {name!r} cannot meet it: {error}") from error
    if abs(match.relative_error) > BUDGET_TOLERANCE:
        raise ConfigError(
            f"budget: architecture {name!r} comes only within {abs(match.relative_error):.1%} of the target "
            f"{match.target:.4g} {match.metric} (closest {match.achieved:.4g}); expected within "
            f"{BUDGET_TOLERANCE:.0%}: change the budget or the architecture's fixed sizes"
        )
    return match


def plan_comparison(config: dict, bundle: DataBundle) -> list[tuple[str, ModelConfig, BudgetMatch | None]]:
    """Every architecture's matched ``ModelConfig``, solved before any training starts,
    so an impossible budget fails at once."""
    plan = []
    for entry in architecture_entries(config):
        overrides = {k: v for k, v in entry.items() if k != "name"}
        model_config = model_config_for(config, bundle, overrides)
        match = match_architecture(config, bundle, model_config, entry["name"])
        plan.append((entry["name"], match.config if match else model_config, match))
    return plan


def learning_rates(config: dict) -> list[float]:
    lr = config["train"]["lr"]
    return [float(v) for v in (lr if isinstance(lr, list) else [lr])]


def compare(config: dict, bundle: DataBundle, folder: Path, *, resume: bool = False,
            on_result: Callable[[dict, list[dict]], None] | None = None,
            plan: list[tuple[str, ModelConfig, BudgetMatch | None]] | None = None) -> list[dict]:
    """Train every architecture (and learning rate); returns the best run per architecture.

    ``on_result(best, all_so_far)`` is called as each architecture finishes; ``plan``
    is :func:`plan_comparison`'s answer when the caller has it already.
    """
    plan = plan_comparison(config, bundle) if plan is None else plan
    _, higher_is_better = primary_metric(bundle)
    lrs = learning_rates(config)
    finished: list[dict] = []
    for name, model_config, match in plan:
        runs = []
        for lr in lrs:
            run_folder = folder / name / (f"lr-{lr:g}" if len(lrs) > 1 else "run")
            result = train_run(config, bundle, model_config, lr=lr, folder=run_folder, resume=resume, label=name)
            result["budget"] = (
                {"metric": match.metric, "target": match.target, "achieved": match.achieved,
                 "relative_error": match.relative_error} if match else None
            )
            runs.append(result)
        scored = [r for r in runs if r["best"] is not None]
        if scored:
            best = (max if higher_is_better else min)(scored, key=lambda r: r["best"])
        else:
            best = runs[-1]
        best["sweep"] = [{"lr": r["lr"], "best": r["best"], "final": r["final"]} for r in runs]
        finished.append(best)
        if on_result is not None:
            on_result(best, finished)
    return finished
