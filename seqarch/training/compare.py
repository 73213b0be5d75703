"""``seqarch compare``: every listed architecture at one matched budget, same data,
same seeds, same optimiser recipe; optionally a learning-rate sweep per architecture
with the best run kept.

Budget (the config's ``budget`` section):
- ``params: N``: each architecture is resized (width, or depth with
  ``match_by: depth``) by :func:`seqarch.budget.match_budget` to N parameters;
- ``flops: C``: the whole run's training FLOPs. With ``steps x batch x seq_len``
  tokens fixed, that is ``C / tokens`` training FLOPs per token of a
  ``(batch, seq_len)`` step (:mod:`seqarch.flops`: per-sequence work times the
  batch plus the once-per-step work; attention by ``attention_flops``), which the
  solver meets by resizing each architecture.
Without a budget, every architecture is trained at the config's own size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..budget import BudgetMatch, count_params, forward_flops_per_token, match_budget
from ..data import DataBundle
from ..models import ModelConfig
from .config import RunConfig
from .errors import ConfigError, NonFiniteLossError, nested
from .module import run_fingerprint
from .result import BudgetResult, LearningRateRun, RunResult
from .run import model_config_for, prepare_run_folder, train_run

log = logging.getLogger(__name__)

# Every compared model must be this close to the budget (the acceptance bound of a matched comparison).
BUDGET_TOLERANCE = 0.02

Plan = list[tuple[str, ModelConfig, BudgetMatch | None]]


def run_tokens(config: RunConfig, bundle: DataBundle) -> int:
    """Tokens one run trains on: steps x batch x sequence length."""
    return config.train.steps * config.train.batch_size * bundle.seq_len


def match_architecture(config: RunConfig, bundle: DataBundle, model_config: ModelConfig,
                       name: str) -> BudgetMatch | None:
    """Resize ``model_config`` to the config's budget; ``None`` without a budget.

    Raises :class:`ConfigError` when no size comes within 2% of the budget.
    """
    budget = config.budget
    solver = {"length": bundle.seq_len, "batch_size": config.train.batch_size, "attention": budget.attention_flops,
              "by": budget.match_by, "tolerance": BUDGET_TOLERANCE, "name": name}
    try:
        if budget.params is not None:
            match = match_budget(model_config, params=budget.params, count=budget.params_count, **solver)
        elif budget.flops is not None:
            match = match_budget(model_config, training_flops_per_token=budget.flops / run_tokens(config, bundle),
                                 **solver)
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


def plan_comparison(config: RunConfig, bundle: DataBundle) -> Plan:
    """Every architecture's matched ``ModelConfig``, solved before any training starts,
    so an impossible budget fails at once."""
    plan = []
    for i, architecture in enumerate(config.architectures):
        try:
            model_config = model_config_for(config, bundle, architecture)
        except ValueError as error:
            raise ConfigError(nested(f"architectures[{i}]", error)) from error
        match = match_architecture(config, bundle, model_config, architecture.name)
        plan.append((architecture.name, match.config if match else model_config, match))
    return plan


def run_folders(plan: Plan, folder: Path, lrs: list[float]) -> list[tuple[str, ModelConfig, BudgetMatch | None,
                                                                        float, Path]]:
    """``(name, model_config, match, lr, run folder)`` of every run of a comparison, in training order."""
    return [(name, model_config, match, lr, folder / name / (f"lr-{lr:g}" if len(lrs) > 1 else "run"))
            for name, model_config, match in plan for lr in lrs]


def check_run_folders(config: RunConfig, bundle: DataBundle, folder: Path, plan: Plan, *, resume: bool) -> None:
    """Every run folder of the comparison checked before the first trains (checkpoints over which a
    run would train, an unreadable checkpoint, one made by another model or recipe)."""
    for _, model_config, _, lr, run_folder in run_folders(plan, folder, config.train.learning_rates):
        prepare_run_folder(run_folder, resume,
                           run_fingerprint(model_config, bundle.kind, config.train, lr, bundle.seq_len))


def train_or_record_failure(config: RunConfig, bundle: DataBundle, model_config: ModelConfig, *, name: str,
                            lr: float, folder: Path, resume: bool, callbacks: list | None = None,
                            position: tuple[int, int] = (1, 1)) -> RunResult:
    """:func:`train_run`, or, when the run's loss becomes NaN, the record of that failure (the
    comparison goes on with the other architectures)."""
    try:
        return train_run(config, bundle, model_config, lr=lr, folder=folder, resume=resume, label=name,
                         callbacks=callbacks, position=position)
    except NonFiniteLossError as error:
        log.error("%s (lr %g) failed: %s", name, lr, error)
        return RunResult.failed(name, model_config, lr=lr, metric=bundle.metric.name,
                                higher_is_better=bundle.metric.higher_is_better, params=count_params(model_config),
                                flops_per_token=forward_flops_per_token(model_config, bundle.seq_len,
                                                                        config.train.batch_size,
                                                                        config.budget.attention_flops),
                                folder=str(folder), failure=str(error))


def compare(config: RunConfig, bundle: DataBundle, folder: Path, *, resume: bool = False,
            on_result: Callable[[RunResult, list[RunResult]], None] | None = None,
            plan: Plan | None = None, callbacks: Callable[[str, int], list] | None = None) -> list[RunResult]:
    """Train every architecture (and learning rate); returns the best run per architecture,
    by the task's metric (``bundle.metric``). An architecture whose every run failed (a NaN loss)
    is returned with its ``failure``; the others are trained all the same.

    ``on_result(best, all_so_far)`` is called as each architecture finishes; ``plan``
    is :func:`plan_comparison`'s answer when the caller has it already; ``callbacks(name, index)``
    gives the extra Lightning callbacks of the ``index``-th run.
    """
    plan = plan_comparison(config, bundle) if plan is None else plan
    lrs = config.train.learning_rates
    check_run_folders(config, bundle, folder, plan, resume=resume)
    finished: list[RunResult] = []
    runs_by_name: dict[str, list[RunResult]] = {}
    runs_planned = run_folders(plan, folder, lrs)
    for index, (name, model_config, match, lr, run_folder) in enumerate(runs_planned):
        result = train_or_record_failure(config, bundle, model_config, name=name, lr=lr, folder=run_folder,
                                         resume=resume, callbacks=callbacks(name, index) if callbacks else None,
                                         position=(index + 1, len(runs_planned)))
        result.budget = BudgetResult.of(match)
        runs = runs_by_name.setdefault(name, [])
        runs.append(result)
        if len(runs) < len(lrs):
            continue
        scored = [r for r in runs if r.best is not None and r.failure is None]
        best = scored[0] if scored else runs[-1]
        for run in scored[1:]:
            if bundle.metric.better(run.best, best.best):
                best = run
        best.sweep = [LearningRateRun(r.lr, r.best, r.final, r.failure) for r in runs]
        finished.append(best)
        if on_result is not None:
            on_result(best, finished)
    return finished
