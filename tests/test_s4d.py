"""S4D: the Vandermonde kernel equals the recurrence of the ZOH-discretised SSM; inits; options."""

from __future__ import annotations

import math

import pytest
import torch

from seqarch.mixers.s4d import S4D
from seqarch.modules.diagonal_ssm import s4d_eigenvalues


@pytest.mark.parametrize("init", ["lin", "inv"])
@pytest.mark.parametrize("length", [1, 30, 64, 257])
def test_kernel_equals_direct_recurrence(init, length):
    torch.manual_seed(0)
    layer = S4D(4, d_state=8, init=init, dtype=torch.float64)
    log_z, b_bar, c = layer.kernel.discretize(torch.float64)
    a = log_z / torch.exp(layer.kernel.log_dt).unsqueeze(-1)
    # ZOH by definition: z = exp(dt A), B-bar = A^{-1} (exp(dt A) - 1) B with B = 1.
    assert torch.allclose(b_bar, (torch.exp(log_z) - 1) / a)
    h = torch.zeros(4, 4, dtype=torch.complex128)
    impulse = []
    for t in range(length):
        h = torch.exp(log_z) * h + (b_bar if t == 0 else 0)
        impulse.append(2 * (c[0] * h).sum(-1).real)
    assert torch.allclose(layer.kernel(length, torch.float64)[0], torch.stack(impulse, -1), atol=1e-12)


def test_initialisations_follow_the_paper():
    lin = s4d_eigenvalues(2, 4, "lin")
    assert torch.allclose(lin[0], torch.tensor([-0.5 + 0j, -0.5 + 1j * math.pi, -0.5 + 2j * math.pi,
                                                -0.5 + 3j * math.pi], dtype=torch.complex128))
    inv = s4d_eigenvalues(1, 4, "inv")
    n = torch.arange(4, dtype=torch.float64)
    assert torch.allclose(inv[0].imag, 8 / math.pi * (8 / (2 * n + 1) - 1))


def test_ssm_parameters_carry_optimizer_hints():
    layer = S4D(8, lr_scale=0.25)  # a multiple of the run's learning rate (default 0.5)
    assert S4D(8).kernel.log_dt._optim == {"lr_scale": 0.5, "weight_decay": 0.0}
    for param in (layer.kernel.log_dt, layer.kernel.log_a_real, layer.kernel.a_imag):
        assert param._optim == {"lr_scale": 0.25, "weight_decay": 0.0}
    for param in (layer.output.proj.weight, layer.kernel.C, layer.skip):
        assert not hasattr(param, "_optim")
    # lr_scale=None: the run's learning rate, still no weight decay.
    assert S4D(8, lr_scale=None).kernel.log_dt._optim == {"weight_decay": 0.0}


def test_state_is_constant_in_length():
    layer = S4D(8, d_state=16)
    assert layer.state_size(10) == layer.state_size(10_000) == 8 * 16


@pytest.mark.parametrize("options,argument", [
    ({"d_state": 7}, "d_state"), ({"d_state": 0}, "d_state"), ({"init": "legs"}, "init"),
    ({"dt_min": 0.1, "dt_max": 0.01}, "dt_min"), ({"dropout": 1.5}, "dropout"), ({"lr_scale": 0.0}, "lr_scale"),
])
def test_bad_options_name_the_argument(options, argument):
    with pytest.raises(ValueError, match=argument):
        S4D(8, **options)


def test_a_state_of_another_mixer_names_the_state():
    from seqarch.mixers.attention import Attention

    layer = S4D(8, d_state=4)
    foreign = Attention(8, n_heads=2).init_state(2, max_length=8)
    with pytest.raises(ValueError, match=r"state: expected the dict returned by S4D.init_state .*got keys"):
        layer.step(torch.randn(2, 8), foreign)
