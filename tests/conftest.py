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

import seqarch

# Small options per mixer so the contract suite stays fast on a CPU; a mixer not
# listed here runs with its defaults.
SMALL_OPTIONS = {
    "attention": {"n_heads": 2},
    "s4d": {"d_state": 8},
    "s4": {"d_state": 8, "max_length": 256},
    "m2": {"max_length": 256},
}
D_MODEL = 16


def small_mixer(name: str, *, causal: bool = True, dtype=None, seed: int = 0, **extra):
    torch.manual_seed(seed)
    options = {**SMALL_OPTIONS.get(name, {}), **extra}
    return seqarch.build_mixer(name, D_MODEL, causal=causal, dtype=dtype, **options)


@pytest.fixture(params=sorted(seqarch.MIXERS))
def mixer_name(request) -> str:
    return request.param
