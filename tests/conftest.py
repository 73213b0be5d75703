"""Shared fixtures: small, fast options for every registered mixer."""

from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set
# before any kernel module is imported: without a GPU, every Triton kernel then
# runs in Triton's CPU interpreter and the kernel tests can compare it to its twin.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from torch import nn

import seqarch
from seqarch.mixers.base import MIXERS, Mixer

# Small options per mixer so the contract suite stays fast on a CPU; a mixer not
# listed here runs with its defaults.
SMALL_OPTIONS = {
    "attention": {"n_heads": 2},
    "s4d": {"d_state": 8},
    "s4": {"d_state": 8, "max_length": 256},
    "m2": {"max_length": 256},
    "mamba": {"d_state": 4},
    "mamba2": {"head_dim": 8, "d_state": 8, "chunk_size": 16},
    "hyena": {"max_length": 256, "filter_order": 16},
    "hyena_modal": {"d_state": 8},
    "h3": {"d_state": 8, "shift_state": 4, "head_dim": 2},
    "linear_attention": {"n_heads": 2},
    "retnet": {"n_heads": 2},
    "gla": {"n_heads": 2},
    "deltanet": {"n_heads": 2},
    "gated_deltanet": {"n_heads": 2},
    "based": {"n_heads": 2, "key_dim": 4},
    "sliding_window_attention": {"n_heads": 2, "window": 8},
    "base_conv": {},
}
D_MODEL = 16


def small_mixer(name: str, *, causal: bool = True, dtype=None, seed: int = 0, **extra):
    torch.manual_seed(seed)
    options = {**SMALL_OPTIONS.get(name, {}), **extra}
    return seqarch.build_mixer(name, D_MODEL, causal=causal, dtype=dtype, **options)


@pytest.fixture(params=sorted(seqarch.MIXERS))
def mixer_name(request) -> str:
    return request.param


class CausalEMA(Mixer):
    """A causal-only test mixer with a fixed-size state (as Mamba would be): a per-channel
    exponential moving average ``h_t = a h_{t-1} + (1 - a) x_t``, then a linear map.

    ``decays`` (one per layer, read at ``layer_idx``; default 0.5) shows a per-layer option
    under one registered name.
    """

    has_bidirectional_form = False
    has_fixed_size_state = True
    step_reads_position = False

    def __init__(self, d_model, *, causal=True, decays=None, layer_idx=None, device=None, dtype=None):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx)
        self.decay = 0.5 if decays is None else decays[layer_idx or 0]
        self.out = nn.Linear(d_model, d_model, device=device, dtype=dtype)

    def forward(self, x):
        self.check_sequence(x)
        h, outputs = x.new_zeros(x.shape[0], x.shape[2]), []
        for t in range(x.shape[1]):
            h = self.decay * h + (1 - self.decay) * x[:, t]
            outputs.append(h)
        return self.out(torch.stack(outputs, 1) if outputs else x)

    def _init_state(self, batch_size, *, device, dtype, max_length):
        return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)}

    def _step(self, x_t, state):
        h = self.decay * state["h"] + (1 - self.decay) * x_t
        return self.out(h), {**state, "h": h}

    def flops_breakdown(self, length):
        return {"matmul": 2 * length * self.d_model ** 2, "fft": 0, "other": 4 * length * self.d_model}

    def state_size(self, length):
        return self.d_model


@pytest.fixture
def registered():
    """``registered(name, cls)`` registers a test mixer until the test ends."""
    names = []

    def register(name, cls):
        seqarch.register_mixer(name)(cls)
        names.append(name)
        return cls

    yield register
    for name in names:
        MIXERS.pop(name, None)
