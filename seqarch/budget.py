"""Parameter and FLOP accounting, and the matched-budget solver.

Comparisons between architectures are fair only at the same budget.  This module
counts parameters (by building the model on the ``meta`` device: no memory, no
time) and analytic forward FLOPs (each mixer's ``flops_breakdown``; FFTs by the
``5 n log2 n`` formula), and solves for the width or depth of another
architecture that meets a target parameter count or FLOPs per token.

Conventions: a multiply-add counts 2 FLOPs; training FLOPs are 3x the forward
(backward ~ 2x forward, Kaplan et al. 2020), so ``6 N`` per token for the dense
part as in Chinchilla; attention scores are counted dense as in PaLM appendix B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .checks import check_choice, check_positive_int
from .models import LanguageModel, ModelConfig, SequenceClassifier
from .modules.mlp import default_hidden

TRAINING_FLOPS_PER_FORWARD = 3


def build_meta_model(config: ModelConfig) -> nn.Module:
    """The model of ``config`` on the meta device (shapes only)."""
    cls = SequenceClassifier if config.num_classes is not None else LanguageModel
    return cls(config, device="meta")


def count_params(config: ModelConfig) -> int:
    """Parameters of the model ``config`` describes (tied embeddings counted once)."""
    return build_meta_model(config).num_params()


def forward_flops_per_token(config: ModelConfig, length: int) -> float:
    """Analytic forward FLOPs per token at sequence ``length``."""
    check_positive_int("length", length)
    return build_meta_model(config).flops_per_token(length)


def training_flops(config: ModelConfig, length: int, tokens: int) -> float:
    """FLOPs of training on ``tokens`` tokens in sequences of ``length`` (forward + backward)."""
    check_positive_int("tokens", tokens)
    return TRAINING_FLOPS_PER_FORWARD * forward_flops_per_token(config, length) * tokens


def flops_breakdown(config: ModelConfig, length: int) -> dict[str, float]:
    """Forward FLOPs for one sequence by kind, summed over layers, plus the output head."""
    model = build_meta_model(config)
    totals: dict[str, float] = {}
    for block in model.backbone.blocks:
        for kind, value in block.mixer.flops_breakdown(length).items():
            totals[f"mixer_{kind}"] = totals.get(f"mixer_{kind}", 0) + value
        if block.channel is not None:
            totals["channel"] = totals.get("channel", 0) + block.channel.flops(length)
    totals["head"] = model.head_flops(length)
    return totals


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


def _measure(config: ModelConfig, metric: str, length: int) -> float:
    if metric == "params":
        return float(count_params(config))
    return forward_flops_per_token(config, length)


class _Rejections:
    """The errors of the sizes the options reject, kept so that a budget no size can meet
    reports the options' own message (``d_state: expected an even ...``), not a generic one."""

    def __init__(self) -> None:
        self.first: tuple[dict, ValueError] | None = None

    def note(self, changes: dict, error: ValueError) -> None:
        if self.first is None:
            self.first = (changes, error)

    def raise_if_all_rejected(self, by: str, mixers: list[str]) -> None:
        changes, error = self.first if self.first is not None else ({}, None)
        at = ", ".join(f"{k}={v}" for k, v in changes.items() if v is not None)
        raise ValueError(f"config: no {by} of {mixers} is valid for these options; at {at}: {error}") from error


def _try(config: ModelConfig, metric: str, length: int, rejections: _Rejections | None = None,
         **changes) -> tuple[ModelConfig, float] | None:
    """The config with ``changes`` and its measure, or None where the options reject that size
    (e.g. a width the heads do not divide); the rejection is noted in ``rejections``."""
    try:
        candidate = config.replace(**changes)
        return candidate, _measure(candidate, metric, length)
    except ValueError as error:
        if rejections is not None:
            rejections.note(changes, error)
        return None


def _closest(candidates: list[tuple[ModelConfig, float]], target: float) -> tuple[ModelConfig, float]:
    return min(candidates, key=lambda c: abs(c[1] - target))


# The largest sizes the solver considers: a budget beyond them is an error, never a model that cannot be built.
MAX_PARAMS = 1e10
MAX_HIDDEN_RATIO = 16  # d_ff <= 16 x d_model


def _tune_hidden(config: ModelConfig, metric: str, target: float, length: int) -> tuple[ModelConfig, float]:
    """Fine-tune the channel mixer's hidden width, which the measure is linear in (at most
    ``MAX_HIDDEN_RATIO`` x ``d_model``)."""
    base = _try(config, metric, length)
    if config.channel_mixer == "none" or base is None:
        return base
    hidden = config.d_ff or default_hidden(config.channel_mixer, config.d_model)
    quantum = config.monarch_blocks if config.channel_mixer == "monarch" else 1
    bigger = _try(config, metric, length, d_ff=hidden + quantum * 16)
    if bigger is None:
        return base
    per_unit = (bigger[1] - base[1]) / (quantum * 16)
    ideal = hidden + (target - base[1]) / per_unit if per_unit > 0 else hidden
    ideal = min(ideal, MAX_HIDDEN_RATIO * config.d_model)
    options = []
    for guess in {math.floor(ideal / quantum) * quantum, math.ceil(ideal / quantum) * quantum}:
        if guess >= quantum:
            found = _try(config, metric, length, d_ff=int(guess))
            if found is not None:
                options.append(found)
    return _closest(options + [base], target)


def _scan(values: list[int], measure, target: float, coarse: int = 8) -> list[tuple[ModelConfig, float]]:
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


def match_budget(
    config: ModelConfig,
    *,
    params: float | None = None,
    flops_per_token: float | None = None,
    length: int = 1024,
    by: Literal["width", "depth"] = "width",
    width_multiple: int = 8,
    max_width: int = 8192,
    max_depth: int = 128,
) -> BudgetMatch:
    """Resize ``config`` to meet a parameter count or forward FLOPs per token.

    ``by="width"`` scans ``d_model`` over multiples of ``width_multiple`` (widths an
    option rejects, e.g. heads not dividing it, are skipped); ``by="depth"`` scans
    ``n_layers`` (a hybrid's list of mixers is repeated cyclically).  Then the
    channel mixer's hidden width ``d_ff`` is tuned, which closes the gap left by the
    coarse step.  Exactly one of ``params`` and ``flops_per_token`` is given;
    ``length`` is the sequence length FLOPs are counted at.

    Returns the best :class:`BudgetMatch`; its ``relative_error`` states what was
    achieved.  Raises ValueError when no size comes within 50% of the target.
    """
    if (params is None) == (flops_per_token is None):
        raise ValueError("params, flops_per_token: expected exactly one budget, got "
                         f"params={params}, flops_per_token={flops_per_token}")
    metric = "params" if params is not None else "flops_per_token"
    target = float(params if params is not None else flops_per_token)
    if not target > 0:
        raise ValueError(f"{metric}: expected a positive budget, got {target}")
    check_choice("by", by, ("width", "depth"))
    check_positive_int("length", length)
    if metric == "params" and target > MAX_PARAMS:
        raise ValueError(f"params: expected a budget of at most {MAX_PARAMS:.4g} parameters (the solver's bound), "
                         f"got {target:.4g}")

    if by == "width":
        values = list(range(width_multiple, max_width + 1, width_multiple))
        resize = lambda width: {"d_model": width, "d_ff": None}
    else:
        names = config.layer_mixers
        values = list(range(1, max_depth + 1))
        resize = lambda depth: {
            "n_layers": depth,
            "mixer": config.mixer if isinstance(config.mixer, str) else [names[i % len(names)] for i in range(depth)],
        }
    bound = f"d_model <= {max_width}" if by == "width" else f"n_layers <= {max_depth}"
    bounds = f"the solver considers {bound} and d_ff <= {MAX_HIDDEN_RATIO} x d_model"
    # A FLOP budget beyond what a model of MAX_PARAMS spends (about 2 FLOPs per parameter and token) is
    # checked against the largest size first, so it fails at once rather than after a scan of every size.
    far = metric == "flops_per_token" and target > 2 * MAX_PARAMS
    largest = _try(config, metric, length, **resize(values[-1])) if far else None
    if largest is not None and config.channel_mixer != "none":
        largest = _try(largest[0], metric, length, d_ff=MAX_HIDDEN_RATIO * largest[0].d_model) or largest
    if largest is not None and largest[1] < target / 1.5:
        raise ValueError(
            f"{metric}: no {by} of {config.layer_mixers} meets a budget of {target:.4g}; the largest size, "
            f"d_model={largest[0].d_model}, n_layers={largest[0].n_layers}, d_ff={largest[0].d_ff}, reaches "
            f"{largest[1]:.4g} ({bounds})"
        )
    rejections = _Rejections()
    scanned = _scan(values, lambda v: _try(config, metric, length, rejections, **resize(v)), target)
    if not scanned:
        rejections.raise_if_all_rejected(by, config.layer_mixers)
    # The two sizes around the target, each with its hidden width tuned.
    below = [c for c in scanned if c[1] <= target][-1:]
    above = [c for c in scanned if c[1] > target][:1]
    tuned = [_tune_hidden(c, metric, target, length) for c, _ in below + above]
    best_config, achieved = _closest([t for t in tuned if t is not None], target)
    if abs(achieved - target) > 0.5 * target:
        raise ValueError(
            f"{metric}: no {by} of {config.layer_mixers} meets a budget of {target:.4g}; the closest "
            f"reaches {achieved:.4g} at d_model={best_config.d_model}, n_layers={best_config.n_layers}, "
            f"d_ff={best_config.d_ff} (expected within 50%; {bounds})"
        )
    return BudgetMatch(best_config, metric, target, achieved)
