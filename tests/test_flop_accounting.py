"""The analytic FLOPs of a training step (forward + backward at batch > 1) against a real one, counted
by :mod:`seqarch.flop_count` (FlopCounterMode for matrix products and convolutions, with CPU SDPA
counted by the score pairs its kernel computes and grouped-convolution backward corrected; FFTs by
a dispatch mode). Elementwise work (``"other"``) is counted by neither, so it is left out of both."""

from __future__ import annotations

import pytest
import torch

import seqarch
from seqarch.flop_count import counted_training_step
from seqarch.flops import BACKWARD_PER_FORWARD, kind_of, step_flops

from conftest import SMALL_OPTIONS

BATCH, LENGTH, D_MODEL, VOCAB = 3, 64, 16, 32
COUNTED_KINDS = ("matmul", "conv", "fft")


def analytic_training_step(model, batch: int, length: int) -> float:
    by_kind = step_flops(model, batch, length).training_by_kind()
    return sum(by_kind.get(kind, 0) for kind in COUNTED_KINDS)


@pytest.mark.parametrize("mixer_name", sorted(seqarch.MIXERS))
def test_training_step_flops_match_the_counted_step(mixer_name):
    torch.manual_seed(0)
    config = seqarch.ModelConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=1, mixer=mixer_name,
                                 mixer_options={mixer_name: SMALL_OPTIONS.get(mixer_name, {})})
    model = seqarch.LanguageModel(config)
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH))
    counted = sum(counted_training_step(model, tokens).values())
    analytic = analytic_training_step(model, BATCH, LENGTH)
    assert abs(analytic - counted) <= 0.05 * counted, f"analytic {analytic:.4g}, counted {counted:.4g}"


def _model(mixer_name: str) -> seqarch.LanguageModel:
    config = seqarch.ModelConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=2, mixer=mixer_name,
                                 mixer_options={mixer_name: SMALL_OPTIONS.get(mixer_name, {})})
    return seqarch.LanguageModel(config, device="meta")


@pytest.mark.parametrize("mixer_name", sorted(seqarch.MIXERS))
def test_every_mixer_splits_its_work_into_per_sequence_and_once_per_step(mixer_name):
    mixer = _model(mixer_name).backbone.blocks[0].mixer
    kinds = {"matmul", "conv", "fft", "other"}
    for parts in (mixer.shared_flops_breakdown(LENGTH), mixer.masked_flops_breakdown(LENGTH)):
        assert {"matmul", "fft", "other"} <= set(parts) <= kinds and all(v >= 0 for v in parts.values())
    per_sequence = sum(mixer.flops_breakdown(LENGTH).values())
    shared = sum(mixer.shared_flops_breakdown(LENGTH).values())
    assert sum(mixer.forward_flops_breakdown(LENGTH, 5).values()) == 5 * per_sequence + shared


def test_the_kernels_are_charged_once_per_step_not_once_per_sequence():
    model = _model("s4")
    one, many = step_flops(model, 1, LENGTH), step_flops(model, 64, LENGTH)
    per_sequence, shared = sum(one.per_sequence.values()), sum(one.shared.values())
    assert shared > per_sequence  # S4's kernel at this size: the old per-sequence charge was wrong by ~B x
    assert many.forward == pytest.approx(64 * per_sequence + shared)
    assert many.forward_per_token < 0.5 * one.forward_per_token
    assert step_flops(model, 2, LENGTH).training - one.training == pytest.approx(
        sum(v * (1 + BACKWARD_PER_FORWARD[kind_of(p)]) for p, v in one.per_sequence.items()))


@pytest.mark.parametrize("mixer_name", ["attention", "sliding_window_attention", "s4d"])
def test_dense_attention_convention_adds_the_masked_scores(mixer_name):
    model = _model(mixer_name)
    causal, dense = step_flops(model, BATCH, LENGTH), step_flops(model, BATCH, LENGTH, "dense")
    if mixer_name == "attention":  # 2 layers, 2 heads of 8: the masked L (L - 1) / 2 pairs, 4 d_head each
        masked = 2 * BATCH * 2 * (LENGTH * (LENGTH - 1) // 2)
        assert dense.forward_by_part()["mixer_matmul"] - causal.forward_by_part()["mixer_matmul"] == 4 * 8 * masked
    else:  # the banded mask of SDPA and the mixers without scores: what the kernels compute is already dense
        assert dense.forward == causal.forward
    with pytest.raises(ValueError, match="attention: expected one of"):
        step_flops(model, BATCH, LENGTH, "sparse")
