"""FLOPs of a training step on ``(batch, length)``: per-sequence work times the batch, plus the
work done once per step.

Every mixer reports its forward FLOPs in two parts (:class:`seqarch.mixers.base.Mixer`):
``flops_breakdown(length)``, the work of one sequence, which a batch of ``B`` does ``B`` times,
and ``shared_flops_breakdown(length)``, the work done once per call whatever the batch (the long
convolutions' kernel generation, filter MLPs and filter FFTs; parameter transforms).  So a step
costs ``B x per_sequence + shared``: at ``B = 64`` S4's kernel is charged once, not 64 times.

Conventions:

- a multiply-add counts 2 FLOPs; FFTs ``5 n log2 n`` (half for a real FFT);
- ``attention="causal"`` (the default) counts the attention scores the kernels compute: each
  query with the keys it may see, ``L (L + 1) / 2`` pairs for causal attention;
  ``attention="dense"`` counts every ``L^2`` pair, as PaLM's ``12 n_layers d T`` does;
- the backward pass costs :data:`BACKWARD_PER_FORWARD` times the forward, by kind: 2 for
  matrix products and convolutions (the input's and the weight's gradients, Kaplan et al. 2020,
  so ``6 N`` per token for the dense part), 1.5 for FFTs (an FFT convolution's backward runs
  three transforms -- of the output gradient, and the inverses for the input and the filter
  gradients -- to the forward's two), 2 for the rest.  Recomputation (a fused attention
  backward recomputing its scores) is not counted: these are model FLOPs, as MFU counts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .checks import check_choice, check_positive_int

ATTENTION_CONVENTIONS = ("causal", "dense")
BACKWARD_PER_FORWARD = {"matmul": 2.0, "conv": 2.0, "fft": 1.5, "other": 2.0}


def kind_of(part: str) -> str:
    """The FLOP kind of a part name: ``mixer_fft`` -> ``fft``, ``channel_other`` -> ``other``; the
    head is a matrix product."""
    kind = part.removeprefix("mixer_").removeprefix("channel_")
    return kind if kind in BACKWARD_PER_FORWARD else "matmul"


def _add(totals: dict[str, float], parts: dict[str, int], prefix: str = "", times: int = 1) -> None:
    for kind, value in parts.items():
        totals[prefix + kind] = totals.get(prefix + kind, 0) + times * value


@dataclass(frozen=True)
class StepFlops:
    """Forward FLOPs of one step on ``(batch_size, length)`` by part (``mixer_matmul``, ``mixer_conv``,
    ``mixer_fft``, ``mixer_other``, ``channel_matmul``, ``channel_other``, ``head``), summed over layers.

    ``per_sequence``: the work of one sequence (done ``batch_size`` times); ``shared``: the work
    done once per step whatever the batch.
    """

    batch_size: int
    length: int
    attention: str
    per_sequence: dict[str, float] = field(default_factory=dict)
    shared: dict[str, float] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.length

    def forward_by_part(self) -> dict[str, float]:
        """Forward FLOPs of the step by part: ``batch_size x per_sequence + shared``."""
        totals: dict[str, float] = {}
        _add(totals, self.per_sequence, times=self.batch_size)
        _add(totals, self.shared)
        return totals

    @property
    def forward(self) -> float:
        """Forward FLOPs of the step."""
        return float(sum(self.forward_by_part().values()))

    def training_by_kind(self) -> dict[str, float]:
        """Forward and backward FLOPs of the step by kind (``matmul``, ``conv``, ``fft``, ``other``)."""
        totals: dict[str, float] = {}
        for part, value in self.forward_by_part().items():
            kind = kind_of(part)
            totals[kind] = totals.get(kind, 0) + value * (1 + BACKWARD_PER_FORWARD[kind])
        return totals

    @property
    def training(self) -> float:
        """Forward and backward FLOPs of the step (:data:`BACKWARD_PER_FORWARD` by kind)."""
        return float(sum(self.training_by_kind().values()))

    @property
    def forward_per_token(self) -> float:
        return self.forward / self.tokens

    @property
    def training_per_token(self) -> float:
        return self.training / self.tokens


def describe_conventions(attention: str) -> str:
    """One line for a report: how its FLOPs are counted."""
    scores = ("causal (the score pairs the kernels compute, L(L+1)/2 per head for causal attention)"
              if check_attention_convention(attention) == "causal" else "dense (every L^2 score pair, as PaLM)")
    return ("analytic, per (batch, length) training step: per-sequence work x batch + once-per-step work (kernel "
            "generation, filter MLPs and FFTs); backward 2 x forward (FFTs 1.5 x); attention " + scores)


def check_attention_convention(attention: str) -> str:
    """``"causal"`` or ``"dense"`` (see the module), else a ValueError."""
    return check_choice("attention", attention, ATTENTION_CONVENTIONS)


def step_flops(model: nn.Module, batch_size: int, length: int, attention: str = "causal") -> StepFlops:
    """:class:`StepFlops` of ``model`` (a :class:`~seqarch.models.LanguageModel` or
    :class:`~seqarch.models.SequenceClassifier`, on any device, ``meta`` included) on
    ``(batch_size, length)`` under the ``attention`` convention."""
    check_positive_int("batch_size", batch_size)
    check_positive_int("length", length)
    dense = check_attention_convention(attention) == "dense"
    per_sequence: dict[str, float] = {}
    shared: dict[str, float] = {}
    for block in model.backbone.blocks:
        _add(per_sequence, block.mixer.flops_breakdown(length), "mixer_")
        if dense:
            _add(per_sequence, block.mixer.masked_flops_breakdown(length), "mixer_")
        _add(shared, block.mixer.shared_flops_breakdown(length), "mixer_")
        if block.channel is not None:
            _add(per_sequence, block.channel.flops_breakdown(length), "channel_")
    per_sequence["head"] = model.head_flops(length)
    return StepFlops(batch_size, length, attention, per_sequence, shared)
