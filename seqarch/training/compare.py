"""``seqarch compare``: every listed architecture at one matched budget, same data,
same seeds, same optimiser recipe; optionally a learning-rate sweep per architecture
(chosen on validation) and several seeds (``train.seeds``; the report gives mean +- 95%
interval on the held-out test split).

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

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..budget import BudgetMatch, count_params, forward_flops_per_token, match_budget
from ..data import DataBundle, Metric
from ..models import ModelConfig
from .config import RunConfig, TrainSection
from .errors import ConfigError, NonFiniteLossError, nested
from .module import run_fingerprint
from .result import BudgetResult, LearningRateRun, RunResult, SeedRun
from .run import check_length_limit, model_config_for, prepare_run_folder, train_run

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
              "by": budget.match_by, "tolerance": BUDGET_TOLERANCE, "name": name,
              "width_multiple": budget.width_multiple}
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
    so an impossible budget (or a test length a model cannot take) fails at once."""
    plan = []
    for i, architecture in enumerate(config.architectures):
        try:
            model_config = model_config_for(config, bundle, architecture)
        except ValueError as error:
            raise ConfigError(nested(f"architectures[{i}]", error)) from error
        match = match_architecture(config, bundle, model_config, architecture.name)
        model_config = match.config if match else model_config
        try:
            check_length_limit(model_config, bundle)
        except ValueError as error:
            raise ConfigError(f"architectures[{i}] ({architecture.name}): {error}") from error
        plan.append((architecture.name, model_config, match))
    return plan


@dataclass(frozen=True)
class PlannedRun:
    """One run of a comparison: an architecture (``index`` in the plan) at one learning rate and seed."""

    name: str
    index: int
    model_config: ModelConfig
    match: BudgetMatch | None
    lr: float
    seed: int
    folder: Path


def run_folder_of(folder: Path, name: str, lr: float, seed: int, train: TrainSection) -> Path:
    """``folder/name/run``, ``.../lr-<lr>`` for a sweep, then ``/seed-<seed>`` when ``train.seeds`` is set:
    one folder per (architecture, learning rate, seed), never shared (the config refuses learning rates
    or seeds that would name one folder twice)."""
    path = folder / name / (f"lr-{lr:g}" if len(train.learning_rates) > 1 else "run")
    return path / f"seed-{seed}" if train.seeds is not None else path


def planned_runs(config: RunConfig, plan: Plan, folder: Path) -> list[PlannedRun]:
    """Every run of a comparison in training order: architecture, then learning rate, then seed."""
    train = config.train
    return [PlannedRun(name, index, model_config, match, lr, seed, run_folder_of(folder, name, lr, seed, train))
            for index, (name, model_config, match) in enumerate(plan)
            for lr in train.learning_rates for seed in train.run_seeds]


def seed_config(config: RunConfig, seed: int) -> RunConfig:
    """``config`` for one run of ``seed``."""
    return config.model_copy(update={"train": config.train.for_seed(seed)})


def check_run_folders(config: RunConfig, bundle: DataBundle, folder: Path, plan: Plan, *, resume: bool) -> None:
    """Every run folder of the comparison checked before the first trains (checkpoints over which a
    run would train, an unreadable checkpoint, one made by another model or recipe)."""
    for run in planned_runs(config, plan, folder):
        prepare_run_folder(run.folder, resume, run_fingerprint(run.model_config, bundle.kind,
                                                               config.train.for_seed(run.seed), run.lr, bundle.seq_len))


def train_or_record_failure(config: RunConfig, bundle: DataBundle, model_config: ModelConfig, *, name: str,
                            lr: float, folder: Path, resume: bool, callbacks: list | None = None,
                            position: tuple[int, int] = (1, 1), label: str | None = None) -> RunResult:
    """:func:`train_run`, or, when the run's loss becomes NaN, the record of that failure (the
    comparison goes on with the other architectures)."""
    try:
        return train_run(config, bundle, model_config, lr=lr, folder=folder, resume=resume, label=name,
                         callbacks=callbacks, position=position, progress_label=label)
    except NonFiniteLossError as error:
        log.error("%s (lr %g) failed (seed %d): %s", name, lr, config.train.seed, error)
        return RunResult.failed(name, model_config, lr=lr, metric=bundle.metric.name,
                                higher_is_better=bundle.metric.higher_is_better, params=count_params(model_config),
                                flops_per_token=forward_flops_per_token(model_config, bundle.seq_len,
                                                                        config.train.batch_size,
                                                                        config.budget.attention_flops),
                                folder=str(folder), failure=str(error), seed=config.train.seed)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarise(runs: list[RunResult], metric: Metric) -> RunResult:
    """One architecture's result from its runs (every learning rate and seed trained so far).

    The learning rate is chosen on validation: the best mean over seeds of the final model's validation
    metric (the test split, which the report gives, is measured on that final model and never chooses).
    The result is the chosen learning rate's first seed, with ``seed_runs`` holding every seed and, with
    several seeds, ``final``, ``best``, ``test``, ``train_final`` and each length of ``test_lengths`` their means.
    """
    by_lr: dict[float, list[RunResult]] = {}
    for run in runs:
        by_lr.setdefault(run.lr, []).append(run)
    scores = {lr: _mean([r.final for r in group if r.failure is None]) for lr, group in by_lr.items()}
    scored = [lr for lr, score in scores.items() if score is not None]
    chosen = scored[0] if scored else list(by_lr)[-1]
    for lr in scored[1:]:
        if metric.better(scores[lr], scores[chosen]):
            chosen = lr
    group = by_lr[chosen]
    ok = [r for r in group if r.failure is None]
    result = dataclasses.replace(ok[0] if ok else group[-1])
    result.seed_runs = [SeedRun.of(r) for r in group]
    if len(group) > 1 and ok:
        result.final, result.best = _mean([r.final for r in ok]), _mean([r.best for r in ok])
        result.test, result.train_final = _mean([r.test for r in ok]), _mean([r.train_final for r in ok])
        result.test_lengths = {length: _mean([r.test_lengths.get(length) for r in ok])
                               for length in dict.fromkeys(key for r in ok for key in r.test_lengths)}
    result.sweep = [LearningRateRun(lr, _mean([r.best for r in g if r.failure is None]), scores[lr],
                                    next((r.failure for r in g if r.failure), None) if scores[lr] is None else None)
                    for lr, g in by_lr.items()] if len(by_lr) > 1 else []
    return result


def compare(config: RunConfig, bundle: DataBundle, folder: Path, *, resume: bool = False,
            on_result: Callable[[RunResult, list[RunResult]], None] | None = None,
            plan: Plan | None = None, callbacks: Callable[[str, int], list] | None = None,
            on_run: Callable[[list[RunResult]], None] | None = None, first_index: int = 0,
            total_runs: int | None = None) -> list[RunResult]:
    """Train every architecture at every learning rate and seed; returns one result per architecture
    (:func:`summarise`: the learning rate chosen on validation, every seed at it). An architecture whose
    every run failed (a NaN loss) is returned with its ``failure``; the others are trained all the same.

    ``on_result(result, finished)`` is called as each architecture finishes; ``on_run(results)`` after
    every run, with the architectures so far (the last one summarised from the runs it has finished),
    so a report rewritten there keeps every finished run of a killed comparison. ``plan`` is
    :func:`plan_comparison`'s answer when the caller has it already; ``callbacks(name, index)``
    gives the extra Lightning callbacks of the ``index``-th run. ``first_index`` and ``total_runs``: where
    this comparison's runs stand among the command's (a sweep point or suite point of several), so the
    progress line counts ``[i/N]`` and its ETA over the whole command.
    """
    plan = plan_comparison(config, bundle) if plan is None else plan
    check_run_folders(config, bundle, folder, plan, resume=resume)
    runs = planned_runs(config, plan, folder)
    per_architecture = len(runs) // max(len(plan), 1)
    finished: list[RunResult] = []
    trained: list[RunResult] = []
    for index, run in enumerate(runs):
        # [run i/N] names the run; with several per architecture the line also says which architecture,
        # learning rate and seed it is.
        label = run.name if per_architecture == 1 else (
            f"{run.name} (architecture {run.index + 1}/{len(plan)}"
            + (f", lr {run.lr:g}" if len(config.train.learning_rates) > 1 else "")
            + (f", seed {run.seed}" if config.train.seeds is not None else "") + ")")
        result = train_or_record_failure(seed_config(config, run.seed), bundle, run.model_config, name=run.name,
                                         lr=run.lr, folder=run.folder, resume=resume,
                                         callbacks=callbacks(run.name, index) if callbacks else None,
                                         position=(first_index + index + 1, total_runs or len(runs)),
                                         label=label)
        result.budget = BudgetResult.of(run.match)
        trained.append(result)
        summary = summarise(trained, bundle.metric)
        done = len(trained) == per_architecture
        if on_run is not None:
            on_run(finished + [summary])
        if done:
            finished.append(summary)
            trained = []
            if on_result is not None:
                on_result(summary, finished)
    return finished
