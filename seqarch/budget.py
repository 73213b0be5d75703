"""Parameter and FLOP accounting, and the matched-budget solver.

Comparisons between architectures are fair only at the same budget.  This module
counts parameters (by building the model on the ``meta`` device: no memory, no
time) and analytic FLOPs of a training step on ``(batch, length)``
(:mod:`seqarch.flops`: each mixer's per-sequence work times the batch plus its
once-per-step work; FFTs by the ``5 n log2 n`` formula; causal attention as the
kernels compute it, or dense), and solves for the width or depth of another
architecture that meets a target parameter count or FLOPs per token.

The solver resizes the width (or the depth); the channel mixer's hidden width keeps
its preset's ratio to the width and is tuned only within :data:`HIDDEN_RANGE` of it,
to close the gap the coarse step leaves.  A budget no size meets within the
tolerance is a ValueError naming the architecture, the closest value and the bound
that stopped it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .checks import check_choice, check_positive_int, check_real
from .flops import StepFlops, check_attention_convention, step_flops
from .models import LanguageModel, ModelConfig, SequenceClassifier
from .modules.mlp import default_hidden

PARAM_COUNTS = ("total", "non_embedding")


def build_meta_model(config: ModelConfig) -> nn.Module:
    """The model of ``config`` on the meta device (shapes only)."""
    cls = SequenceClassifier if config.num_classes is not None else LanguageModel
    return cls(config, device="meta")


def _embedding_params(model: nn.Module) -> int:
    """The token embedding's parameters, and an untied output head's (Kaplan et al.'s N leaves both out)."""
    embedding = model.backbone.embedding.weight
    head = getattr(model, "head", None)
    untied = (isinstance(head, nn.Linear) and model.config.num_classes is None
              and head.weight is not embedding)
    return embedding.numel() + (head.weight.numel() if untied else 0)


def count_params(config: ModelConfig, count: str = "total") -> int:
    """Parameters of the model ``config`` describes (tied embeddings counted once); ``count="non_embedding"``
    leaves out the token embedding (and an untied language-model head)."""
    check_choice("count", count, PARAM_COUNTS)
    model = build_meta_model(config)
    return model.num_params() - (_embedding_params(model) if count == "non_embedding" else 0)


def config_step_flops(config: ModelConfig, length: int, batch_size: int = 1,
                      attention: str = "causal") -> StepFlops:
    """:func:`seqarch.flops.step_flops` of the model ``config`` describes."""
    return step_flops(build_meta_model(config), batch_size, length, attention)


def forward_flops_per_token(config: ModelConfig, length: int, batch_size: int = 1,
                            attention: str = "causal") -> float:
    """Analytic forward FLOPs per token of a step on ``(batch_size, length)``."""
    return config_step_flops(config, length, batch_size, attention).forward_per_token


def training_flops_per_token(config: ModelConfig, length: int, batch_size: int = 1,
                             attention: str = "causal") -> float:
    """Analytic forward + backward FLOPs per token of a training step on ``(batch_size, length)``."""
    return config_step_flops(config, length, batch_size, attention).training_per_token


def training_flops(config: ModelConfig, length: int, tokens: int, batch_size: int = 1,
                   attention: str = "causal") -> float:
    """FLOPs of training on ``tokens`` tokens in steps of ``(batch_size, length)`` (forward + backward)."""
    check_positive_int("tokens", tokens)
    return training_flops_per_token(config, length, batch_size, attention) * tokens


def flops_breakdown(config: ModelConfig, length: int, batch_size: int = 1,
                    attention: str = "causal") -> dict[str, float]:
    """Forward FLOPs of a step on ``(batch_size, length)`` by part, summed over layers, plus the output head."""
    return config_step_flops(config, length, batch_size, attention).forward_by_part()


@dataclass(frozen=True)
class BudgetMatch:
    """A config meeting a budget: the ``achieved`` value against the ``target`` and the relative error."""

    config: ModelConfig
    metric: str
    target: float
    achieved: float

    @property
    def relative_error(self) -> float:
        return (self.achieved - self.target) / self.target


METRICS = ("params", "non_embedding_params", "flops_per_token", "training_flops_per_token")
# The largest sizes the solver considers: a budget beyond them is an error, never a model that cannot be built.
MAX_PARAMS = 1e10
#: The channel mixer's hidden width stays within this factor of its preset's ratio to the width.
HIDDEN_RANGE = (0.75, 1.25)


@dataclass(frozen=True)
class _Measure:
    """What the solver meets: a metric of a config, at a step of ``(batch_size, length)`` for FLOPs."""

    metric: str
    length: int
    batch_size: int
    attention: str

    def __call__(self, config: ModelConfig) -> float:
        if self.metric == "params":
            return float(count_params(config))
        if self.metric == "non_embedding_params":
            return float(count_params(config, "non_embedding"))
        flops = config_step_flops(config, self.length, self.batch_size, self.attention)
        return flops.forward_per_token if self.metric == "flops_per_token" else flops.training_per_token


class _Rejections:
    """The errors of the sizes the options reject, kept so that a budget no size can meet
    reports the options' own message (``d_state: expected an even ...``), not a generic one."""

    def __init__(self) -> None:
        self.first: tuple[dict, ValueError] | None = None

    def note(self, changes: dict, error: ValueError) -> None:
        if self.first is None:
            self.first = (changes, error)

    def raise_if_all_rejected(self, by: str, name: str) -> None:
        changes, error = self.first if self.first is not None else ({}, None)
        at = ", ".join(f"{k}={v}" for k, v in changes.items() if v is not None)
        raise ValueError(f"config: no {by} of {name} is valid for these options; at {at}: {error}") from error


Candidate = tuple[ModelConfig, float]


def _try(config: ModelConfig, measure: _Measure, rejections: _Rejections | None = None,
         **changes) -> Candidate | None:
    """The config with ``changes`` and its measure, or None where the options reject that size
    (e.g. a width the heads do not divide); the rejection is noted in ``rejections``."""
    try:
        candidate = config.replace(**changes)
        return candidate, measure(candidate)
    except ValueError as error:
        if rejections is not None:
            rejections.note(changes, error)
        return None


def _closest(candidates: list[Candidate], target: float) -> Candidate:
    return min(candidates, key=lambda c: abs(c[1] - target))


class _Hidden:
    """The channel mixer's hidden width at a width: the preset's ratio (its explicit ``d_ff`` over
    its ``d_model``, or the default rule when ``d_ff`` is unset), tunable within :data:`HIDDEN_RANGE`."""

    def __init__(self, config: ModelConfig) -> None:
        self.kind = config.channel_mixer
        self.quantum = config.monarch_blocks if self.kind == "monarch" else 1
        self.ratio = None if config.d_ff is None else config.d_ff / config.d_model

    def _round(self, value: float) -> int:
        return max(self.quantum, round(value / self.quantum) * self.quantum)

    def nominal(self, d_model: int) -> int | None:
        """``d_ff`` at ``d_model`` (None: the default rule, which keeps its ratio by itself)."""
        return None if self.ratio is None else self._round(self.ratio * d_model)

    def bounds(self, config: ModelConfig) -> tuple[int, int]:
        centre = config.d_ff if config.d_ff is not None else default_hidden(self.kind, config.d_model)
        if self.ratio is not None:
            centre = self.ratio * config.d_model
        low = math.ceil(HIDDEN_RANGE[0] * centre / self.quantum) * self.quantum
        high = math.floor(HIDDEN_RANGE[1] * centre / self.quantum) * self.quantum
        return max(self.quantum, low), max(self.quantum, high)


def _tune_hidden(candidate: Candidate, measure: _Measure, target: float, hidden: _Hidden) -> Candidate:
    """Fine-tune the hidden width within :data:`HIDDEN_RANGE`: a bisection for the two widths around
    the target (the measure grows with the hidden width, not always linearly: Monarch blocks)."""
    config = candidate[0]
    if config.channel_mixer == "none":
        return candidate
    low, high = (bound // hidden.quantum for bound in hidden.bounds(config))
    tried: dict[int, Candidate | None] = {}

    def at(k: int) -> Candidate | None:
        if k not in tried:
            tried[k] = _try(config, measure, d_ff=k * hidden.quantum)
        return tried[k]

    if at(low) is None or at(high) is None:
        return candidate
    while high - low > 1:  # at(low) below the target or at the range's start; at(high) above or at its end
        middle = (low + high) // 2
        found = at(middle)
        if found is None:
            break
        low, high = (middle, high) if found[1] <= target else (low, middle)
    return _closest([c for c in tried.values() if c is not None] + [candidate], target)


def _scan(values: list[int], measure, target: float, coarse: int = 8) -> list[Candidate]:
    """Measured sizes, in increasing order, up to the first one whose measure exceeds ``target``
    (the measure grows with the value): every ``coarse``-th value first, then one by one from
    the last coarse value below the target.  Values ``measure`` rejects (None) are skipped."""
    below, start = [], 0
    for i in range(coarse - 1, len(values), coarse):
        result = measure(values[i])
        if result is None:
            continue
        if result[1] > target:
            break
        below.append(result)
        start = i + 1
    fine = []
    for value in values[start:]:
        result = measure(value)
        if result is None:
            continue
        fine.append(result)
        if result[1] > target:
            break
    return below + fine


def _first_valid(values, resize) -> Candidate | None:
    for value in values:
        found = resize(value)
        if found is not None:
            return found
    return None


def _describe(config: ModelConfig) -> str:
    return f"d_model={config.d_model}, n_layers={config.n_layers}, d_ff={config.d_ff}"


def match_budget(
    config: ModelConfig,
    *,
    params: float | None = None,
    flops_per_token: float | None = None,
    training_flops_per_token: float | None = None,
    length: int = 1024,
    batch_size: int = 1,
    attention: str = "causal",
    count: str = "total",
    by: Literal["width", "depth"] = "width",
    tolerance: float = 0.02,
    name: str | None = None,
    width_multiple: int = 8,
    max_width: int = 8192,
    max_depth: int = 128,
) -> BudgetMatch:
    """Resize ``config`` to meet a parameter count or FLOPs per token.

    Exactly one budget: ``params`` (``count="non_embedding"``: without the token embedding and an
    untied head), ``flops_per_token`` (forward) or ``training_flops_per_token`` (forward + backward),
    FLOPs of a step on ``(batch_size, length)`` under the ``attention`` convention
    (:mod:`seqarch.flops`).

    ``by="width"`` scans ``d_model`` over multiples of ``width_multiple`` (widths an option
    rejects, e.g. heads not dividing it, are skipped), the channel mixer's ``d_ff`` keeping its
    ratio to ``d_model``; ``by="depth"`` scans ``n_layers`` (a hybrid's list of mixers is repeated
    cyclically).  Then ``d_ff`` is tuned within :data:`HIDDEN_RANGE` of its ratio, which closes
    the gap the coarse step leaves.

    Returns the best :class:`BudgetMatch`.  Raises ValueError, naming the architecture (``name``,
    default its mixers), the closest achievable value and the bound that stopped it, when no size
    comes within ``tolerance`` (relative) of the target.
    """
    budgets = {"params": params, "flops_per_token": flops_per_token,
               "training_flops_per_token": training_flops_per_token}
    given = {k: v for k, v in budgets.items() if v is not None}
    if len(given) != 1:
        raise ValueError("params, flops_per_token, training_flops_per_token: expected exactly one budget, got "
                         + ", ".join(f"{k}={v}" for k, v in budgets.items()))
    (metric, target), = given.items()
    check_choice("count", count, PARAM_COUNTS)
    if metric == "params" and count == "non_embedding":
        metric = "non_embedding_params"
    target = float(target)
    if not target > 0:
        raise ValueError(f"{metric}: expected a positive budget, got {target}")
    check_choice("by", by, ("width", "depth"))
    check_positive_int("length", length)
    check_positive_int("batch_size", batch_size)
    check_attention_convention(attention)
    check_real("tolerance", tolerance, low=0.0, expected="a positive number")
    if metric.endswith("params") and target > MAX_PARAMS:
        raise ValueError(f"{metric}: expected a budget of at most {MAX_PARAMS:.4g} parameters (the solver's bound), "
                         f"got {target:.4g}")
    name = name or str(config.layer_mixers)
    measure = _Measure(metric, length, batch_size, attention)
    hidden = _Hidden(config)

    if by == "width":
        values = list(range(width_multiple, max_width + 1, width_multiple))
        resize = lambda width: {"d_model": width, "d_ff": hidden.nominal(width)}
        bounds = (f"d_model >= {width_multiple}", f"d_model <= {max_width}")
    else:
        names = config.layer_mixers
        values = list(range(1, max_depth + 1))
        resize = lambda depth: {
            "n_layers": depth,
            "mixer": config.mixer if isinstance(config.mixer, str) else [names[i % len(names)] for i in range(depth)],
        }
        bounds = ("n_layers >= 1", f"n_layers <= {max_depth}")
    hidden_bound = f"d_ff within {HIDDEN_RANGE[0]:g}-{HIDDEN_RANGE[1]:g} x its preset ratio"
    rejections = _Rejections()
    sized = lambda v: _try(config, measure, rejections, **resize(v))

    def fail(closest: Candidate, stopped_by: str) -> ValueError:
        error = (closest[1] - target) / target
        return ValueError(
            f"{metric}: no {by} of {name} meets a budget of {target:.4g} within {tolerance:.0%}; the closest "
            f"reaches {closest[1]:.4g} ({error:+.1%}) at {_describe(closest[0])}, stopped by {stopped_by}")

    def beyond_end(candidate: Candidate, side: int) -> None:
        """Raise when even ``candidate``, the smallest (side 0) or largest (1) size with its hidden
        width at that bound, stays on the wrong side of the target."""
        if candidate[0].channel_mixer != "none":
            candidate = _try(candidate[0], measure, d_ff=hidden.bounds(candidate[0])[side]) or candidate
        if abs(candidate[1] - target) > tolerance * target and (candidate[1] > target) == (side == 0):
            stopped = bounds[side] + (f" and {hidden_bound}" if candidate[0].channel_mixer != "none" else "")
            raise fail(candidate, f"the {('smallest', 'largest')[side]} size ({stopped})")

    # A FLOP budget beyond what a model of MAX_PARAMS spends (about 2 FLOPs per parameter and token) is
    # checked against the largest size first, so it fails at once rather than after a scan of every size.
    if metric.endswith("flops_per_token") and target > 2 * MAX_PARAMS:
        largest = _first_valid(reversed(values), sized)
        if largest is not None:
            beyond_end(largest, 1)
    scanned = _scan(values, sized, target)
    if not scanned:
        rejections.raise_if_all_rejected(by, name)
    if scanned[0][1] > target:
        beyond_end(scanned[0], 0)
    if scanned[-1][1] <= target:
        beyond_end(scanned[-1], 1)
    # The two sizes around the target, each with its hidden width tuned.
    below = [c for c in scanned if c[1] <= target][-1:]
    above = [c for c in scanned if c[1] > target][:1]
    tuned = [_tune_hidden(c, measure, target, hidden) for c in below + above]
    best = _closest(tuned, target)
    if abs(best[1] - target) > tolerance * target:
        tuning = hidden_bound if best[0].channel_mixer != "none" else "no channel mixer to tune"
        raise fail(best, f"the {by} step between neighbouring sizes ({tuning})")
    return BudgetMatch(best[0], metric, target, best[1])
