"""The analytic FLOPs of a training step (forward + backward at batch > 1) against a real one, counted.

Counted: matrix products and convolutions by ``torch.utils.flop_counter.FlopCounterMode``, FFTs by
a dispatch mode (``5 n log2 n`` per complex transform, half per real one). Two corrections, both
stated where they are made: FlopCounterMode counts CPU SDPA as 0, so SDPA's CPU kernels are counted
here by formula (the score pairs the kernel computes: causal ``L (L + 1) / 2``, else every pair;
backward twice the forward, the model FLOPs without the recomputed scores); and it overcounts the
backward of grouped (depthwise) convolutions, so a convolution's backward is counted as one
forward per gradient it computes. Elementwise work (``"other"``) is not counted by either.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import seqarch
from seqarch.flops import step_flops

from conftest import SMALL_OPTIONS
from helpers import FLOP_MAPPING, FFTCounter

BATCH, LENGTH, D_MODEL, VOCAB = 3, 64, 16, 32
COUNTED_KINDS = ("matmul", "conv", "fft")


def counted_training_step(model, tokens) -> float:
    """Counted FLOPs (matmul + conv + FFT) of one forward and backward on ``tokens``."""
    counter, ffts = FlopCounterMode(display=False, custom_mapping=FLOP_MAPPING), FFTCounter()
    with counter, ffts:
        model.loss(tokens, tokens).backward()
    return counter.get_total_flops() + ffts.flops


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
    counted = counted_training_step(model, tokens)
    analytic = analytic_training_step(model, BATCH, LENGTH)
    assert abs(analytic - counted) <= 0.05 * counted, f"analytic {analytic:.4g}, counted {counted:.4g}"
