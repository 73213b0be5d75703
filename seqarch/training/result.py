"""The record of one training run, as ``result.json``, ``results.json`` and the reports read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..budget import BudgetMatch
from ..models import ModelConfig


@dataclass
class BudgetResult:
    """How close a run's model came to the comparison's budget."""

    metric: str  # "params" or "flops_per_token"
    target: float
    achieved: float
    relative_error: float

    @classmethod
    def of(cls, match: BudgetMatch | None) -> BudgetResult | None:
        if match is None:
            return None
        return cls(match.metric, match.target, match.achieved, match.relative_error)


@dataclass
class LearningRateRun:
    """One point of a learning-rate sweep."""

    lr: float
    best: float | None
    final: float | None
    failure: str | None = None


def split_metric(metric: str, split: str) -> str:
    """The task's validation metric measured on another split: ``val/accuracy`` -> ``test/accuracy``
    (``split``: ``test``, or ``train_eval`` for examples the run trained on)."""
    return f"{split}/{metric.split('/', 1)[-1]}"


@dataclass
class SeedRun:
    """One seed of an architecture at its chosen learning rate: what the report's intervals are made of."""

    seed: int
    final: float | None
    best: float | None
    test: float | None
    train_final: float | None
    steps: int
    folder: str
    failure: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    test_lengths: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def of(cls, run: RunResult) -> SeedRun:
        return cls(run.seed, run.final, run.best, run.test, run.train_final, run.steps, run.folder, run.failure,
                   run.history, dict(run.test_lengths))


@dataclass
class RunResult:
    """What one run measured.

    ``metric`` is the task's validation metric (``higher_is_better`` says which way is
    better); ``final`` and ``best`` are its last and best values over ``history`` (one
    entry per validation: step, tokens, training FLOPs and the ``val/*`` metrics).
    ``test`` is the metric of the final model on the held-out test split and ``train_final`` on
    examples it trained on (a gap to ``final`` is memorisation). ``test_lengths``: the same metric of the
    final model on the test set at each other sequence length (``data.test_lengths``), keyed by the length
    as a string (JSON keys are strings); empty without them (and in result files written before them).
    ``training_flops``: forward and backward FLOPs of the steps trained (:mod:`seqarch.flops`);
    ``flops_per_token``: forward FLOPs per token of a training step; ``state_size`` is the
    recurrent state of the causal mixers at the training length; ``tokens_per_s`` counts
    only the steps this process trained (not those before a resume), over the time of training and its
    validations (not the final test); ``wall_s`` is the whole run's, the final test included.
    ``peak_memory_bytes``: the CUDA allocator's peak on GPUs, the whole process's peak resident set on CPUs
    (runtime and libraries included); ``training_memory_bytes``: that peak less what was held when training
    began (:class:`seqarch.memory.PeakMemory`'s ``growth_bytes``), what the report gives on CPUs.
    """

    name: str
    mixer: str | list[str]
    lr: float
    d_model: int
    n_layers: int
    params: int
    flops_per_token: float
    training_flops: float
    steps: int
    metric: str
    higher_is_better: bool
    final: float | None
    best: float | None
    state_size: int
    tokens_per_s: float | None
    wall_s: float
    peak_memory_bytes: int | None
    device: str
    history: list[dict[str, float]]
    model_config: ModelConfig
    folder: str
    # Filled by seqarch compare: the budget match, the learning-rate sweep, the sweep point.
    budget: BudgetResult | None = None
    sweep: list[LearningRateRun] = field(default_factory=list)
    data_point: str = ""
    seq_len: int | None = None
    # Set when the run stopped before train.steps because the metric reached train.stop_at.
    stopped_early: bool = False
    # Set when the run failed (a NaN loss): the message; its metrics are then those before the failure.
    failure: str | None = None
    # The run's seed; the task metric of the final model on the test split (None: no test was run);
    # the metric on training examples at the last evaluation; "fresh" or "finite" training data.
    seed: int = 0
    test: float | None = None
    train_final: float | None = None
    train_data: str = ""
    # Filled by seqarch compare: every seed at the chosen learning rate (this run is the first of them).
    seed_runs: list[SeedRun] = field(default_factory=list)
    test_lengths: dict[str, float | None] = field(default_factory=dict)
    # The memory training needed: the peak over what was held when training began (the model was built
    # by then): activations, gradients, optimizer state, data loading. None in results written before it.
    training_memory_bytes: int | None = None
    # The machine's 1-minute load average while the run trained (mean of samples at its start, evaluations
    # and end): how much other work shared the machine while tokens_per_s was measured.
    load_average: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the model config as its fields)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunResult:
        """The result :meth:`to_dict` wrote (a finished run's ``result.json``)."""
        values = dict(values)
        values["model_config"] = ModelConfig.from_dict(values["model_config"])
        values["budget"] = BudgetResult(**values["budget"]) if values.get("budget") else None
        values["sweep"] = [LearningRateRun(**point) for point in values.get("sweep", [])]
        values["seed_runs"] = [SeedRun(**run) for run in values.get("seed_runs", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def failed(cls, name: str, model_config: ModelConfig, *, lr: float, metric: str, higher_is_better: bool,
               params: int, flops_per_token: float, folder: str, failure: str, seed: int = 0) -> RunResult:
        """The record of a run that stopped on an error before it had a result."""
        return cls(name=name, mixer=model_config.mixer, lr=lr, d_model=model_config.d_model,
                   n_layers=model_config.n_layers, params=params, flops_per_token=flops_per_token, training_flops=0.0,
                   steps=0, metric=metric, higher_is_better=higher_is_better, final=None, best=None, state_size=0,
                   tokens_per_s=None, wall_s=0.0, peak_memory_bytes=None, device="", history=[],
                   model_config=model_config, folder=folder, failure=failure, seed=seed)

    @property
    def architecture(self) -> str:
        """The name without a width sweep's ``-d<width>`` suffix."""
        return self.name.removesuffix(f"-d{self.d_model}")
