"""Accounting: analytic FLOPs against torch's FlopCounterMode; the matched-budget solver."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import seqarch
from seqarch.budget import (
    count_params,
    flops_breakdown,
    forward_flops_per_token,
    match_budget,
    training_flops,
    training_flops_per_token,
)
from seqarch.flop_count import FLOP_MAPPING
from seqarch.flops import BACKWARD_PER_FORWARD, kind_of
from seqarch.modules.mlp import default_hidden

from conftest import SMALL_OPTIONS


def counted_flops(module, *inputs) -> int:
    """FlopCounterMode's count, CPU SDPA counted by the score pairs its kernel computes (helpers.FLOP_MAPPING)."""
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_MAPPING)
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops()


# Every mixer causally, and bidirectionally where it declares that form (no skipped tests).
MODES = [(name, True) for name in sorted(seqarch.MIXERS)] + [
    (name, False) for name, cls in sorted(seqarch.MIXERS.items()) if cls.has_bidirectional_form]


@pytest.mark.parametrize(("mixer_name", "causal"), MODES)
def test_mixer_matmul_flops_match_flop_counter(mixer_name, causal):
    mixer = seqarch.build_mixer(mixer_name, 64, causal=causal, **SMALL_OPTIONS.get(mixer_name, {}))
    length = 128
    parts = mixer.forward_flops_breakdown(length)  # one sequence: its own work and the shared work
    analytic = parts["matmul"] + parts.get("conv", 0)
    counted = counted_flops(mixer, torch.randn(1, length, 64))
    assert abs(analytic - counted) <= 0.05 * counted


@pytest.mark.parametrize("mixer", ["attention", "s4d", ["s4d", "attention"]])
def test_model_flops_match_flop_counter(mixer):
    names = [mixer] if isinstance(mixer, str) else mixer
    config = seqarch.ModelConfig(vocab_size=100, d_model=64, n_layers=2, mixer=mixer,
                                 mixer_options={n: SMALL_OPTIONS.get(n, {}) for n in names})
    model = seqarch.LanguageModel(config)
    parts = flops_breakdown(config, 64)
    analytic = parts["mixer_matmul"] + parts.get("mixer_conv", 0) + parts["channel_matmul"] + parts["head"]
    counted = counted_flops(model, torch.randint(0, 100, (1, 64)))
    assert abs(analytic - counted) <= 0.05 * counted
    assert forward_flops_per_token(config, 64) == pytest.approx(sum(parts.values()) / 64)
    # forward and backward, the backward by kind (FFTs 1.5 x their forward, the rest 2 x)
    step = sum(value * (1 + BACKWARD_PER_FORWARD[kind_of(part)]) for part, value in parts.items())
    assert training_flops(config, 64, 1000) == pytest.approx(1000 * step / 64)


def test_count_params_equals_the_real_model():
    config = seqarch.ModelConfig(vocab_size=100, d_model=32, n_layers=2, mixer=["s4d", "attention"])
    assert count_params(config) == seqarch.LanguageModel(config).num_params()


@pytest.mark.parametrize("by", ["width", "depth"])
def test_solver_matches_parameters_within_two_percent(mixer_name, by):
    reference = seqarch.ModelConfig(vocab_size=256, d_model=128, n_layers=2, mixer="attention")
    target = count_params(reference)
    # Small options: widths a mixer's heads divide come every few multiples of 8 (the solver no longer
    # bridges a coarse grid with an out-of-ratio d_ff; test_solver_names_the_bound_that_stopped_it).
    start = seqarch.ModelConfig(vocab_size=256, d_model=64, n_layers=2, mixer=mixer_name,
                                mixer_options={mixer_name: SMALL_OPTIONS.get(mixer_name, {})})
    match = match_budget(start, params=target, by=by)
    assert match.config.layer_mixers[0] == mixer_name
    assert abs(count_params(match.config) - target) <= 0.02 * target
    assert match.relative_error == pytest.approx((count_params(match.config) - target) / target)
    nominal = default_hidden(start.channel_mixer, match.config.d_model)
    assert 0.75 * nominal <= (match.config.d_ff or nominal) <= 1.25 * nominal


def test_solver_matches_flops_per_token():
    reference = seqarch.ModelConfig(vocab_size=256, d_model=128, n_layers=4, mixer="attention")
    target = forward_flops_per_token(reference, 512)
    match = match_budget(reference.replace(mixer="s4d"), flops_per_token=target, length=512)
    assert abs(forward_flops_per_token(match.config, 512) - target) <= 0.02 * target


def test_solver_rejects_impossible_budgets():
    config = seqarch.ModelConfig(vocab_size=256, d_model=64, mixer="attention")
    with pytest.raises(ValueError, match="params: no width"):
        match_budget(config, params=10, by="width")
    with pytest.raises(ValueError, match="exactly one budget"):
        match_budget(config)
    with pytest.raises(ValueError, match="by: expected one of"):
        match_budget(config, params=1e6, by="heads")


def test_solver_keeps_the_presets_hidden_ratio():
    """d_ff follows the width at its preset's ratio (here 2, explicit) and is tuned only within +-25%."""
    start = seqarch.ModelConfig(vocab_size=256, d_model=32, d_ff=64, n_layers=2, mixer="attention")
    target = count_params(start.replace(d_model=192, d_ff=384))
    match = match_budget(start, params=target)
    assert abs(match.relative_error) <= 0.02
    assert 1.5 <= match.config.d_ff / match.config.d_model <= 2.5
    # a FLOP budget at a short length (S4's kernel dominating) still keeps the ratio
    s4 = seqarch.ModelConfig(vocab_size=256, d_model=64, n_layers=2, mixer="s4",
                             mixer_options={"s4": {"d_state": 8, "max_length": 64}})
    target = forward_flops_per_token(s4.replace(d_model=96), 64, batch_size=8)
    match = match_budget(s4, flops_per_token=target, length=64, batch_size=8)
    nominal = default_hidden(s4.channel_mixer, match.config.d_model)
    assert 0.75 * nominal <= (match.config.d_ff or nominal) <= 1.25 * nominal and abs(match.relative_error) <= 0.02


def test_solver_names_the_bound_that_stopped_it():
    config = seqarch.ModelConfig(vocab_size=256, d_model=64, n_layers=2, mixer="attention")
    with pytest.raises(ValueError, match=r"params: no width of transformer meets a budget of 1e\+09 within 2%; the "
                                         r"closest reaches .* at d_model=256, .* stopped by the largest size "
                                         r"\(d_model <= 256 and d_ff within 0.75-1.25 x its preset ratio\)"):
        match_budget(config, params=1e9, max_width=256, name="transformer")
    with pytest.raises(ValueError, match=r"stopped by the smallest size \(d_model >= 8 and d_ff"):
        match_budget(config, params=100)
    # widths 64 apart: no d_ff within its range bridges 64 -> 128
    with pytest.raises(ValueError, match=r"closest reaches .* stopped by the width step between neighbouring sizes "
                                         r"\(d_ff within 0.75-1.25 x its preset ratio\)"):
        match_budget(config, params=count_params(config.replace(d_model=96)), width_multiple=64)
    with pytest.raises(ValueError, match=r"stopped by the largest size \(n_layers <= 4 and d_ff"):
        match_budget(config, params=1e7, by="depth", max_depth=4)


def test_solver_matches_non_embedding_parameters():
    config = seqarch.ModelConfig(vocab_size=4096, d_model=64, n_layers=2, mixer="attention")
    assert count_params(config, "non_embedding") == count_params(config) - 4096 * 64
    untied = config.replace(tie_embeddings=False)
    assert count_params(untied, "non_embedding") == count_params(config, "non_embedding")
    target = count_params(config.replace(d_model=128), "non_embedding")
    match = match_budget(config.replace(mixer="s4d"), params=target, count="non_embedding")
    assert match.metric == "non_embedding_params"
    assert abs(count_params(match.config, "non_embedding") - target) <= 0.02 * target
    with pytest.raises(ValueError, match="count: expected one of"):
        match_budget(config, params=target, count="embedding")


def test_solver_matches_training_flops_of_a_batched_step():
    reference = seqarch.ModelConfig(vocab_size=256, d_model=128, n_layers=2, mixer="attention")
    target = training_flops_per_token(reference, 256, batch_size=16)
    match = match_budget(reference.replace(mixer="m2", mixer_options={"m2": {"max_length": 256}}),
                         training_flops_per_token=target, length=256, batch_size=16)
    assert match.metric == "training_flops_per_token"
    assert abs(training_flops_per_token(match.config, 256, 16) - target) <= 0.02 * target
