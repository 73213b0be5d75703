"""Tests of the S4 layer (seqarch.mixers.s4) and the HiPPO-LegS helpers (seqarch.modules.hippo)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from seqarch.mixers.base import MIXERS
from seqarch.mixers.s4 import S4
from seqarch.modules import dplr_ssm
from seqarch.modules.dplr_ssm import chunk_length, final_state, krylov, matrix_power, state_readout
from seqarch.modules.hippo import hippo_legs, hippo_legs_dplr, hippo_legs_nplr

F64 = torch.float64


def make(d_model: int = 6, d_state: int = 8, seed: int = 0, **options) -> S4:
    torch.manual_seed(seed)
    options.setdefault("max_length", 256)
    return S4(d_model, d_state=d_state, **options).eval()


def dense_ssm(model: S4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense bilinear ``(Abar, Bbar, C)`` by linear solves, independent of the layer's Woodbury;
    ``C = C~ (I - Abar^L)^{-1}`` from the learned ``C~`` and ``L = max_length``."""
    s = model.kernel.discretize(F64)
    a = torch.diag_embed(s["Lambda"]) - s["P"][..., :, None] * s["P"].conj()[..., None, :]
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    dt = s["dt"][:, None, None]
    abar = torch.linalg.solve(eye - dt / 2 * a, eye + dt / 2 * a)
    bbar = torch.linalg.solve(eye - dt / 2 * a, (dt * s["B"][..., None]))[..., 0]
    system = eye - torch.linalg.matrix_power(abar, model.max_length)
    c = torch.linalg.solve(system.transpose(-1, -2), s["C_tilde"].unsqueeze(-1)).squeeze(-1)  # c system = C~
    return abar, bbar, c


def step_all(model: S4, x: torch.Tensor, state=None):
    state = model.init_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y_t, state = model.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


# -- HiPPO ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 8, 64])
def test_nplr_reconstructs_hippo_legs(n):
    a, _ = hippo_legs(n)
    f = hippo_legs_nplr(n)
    v, lam, p = f["V"], f["Lambda"], f["P"].to(torch.complex128)
    rebuilt = v @ torch.diag(lam) @ v.conj().T - torch.outer(p, p)
    assert torch.allclose(rebuilt, a.to(torch.complex128), atol=1e-10 * n)
    assert torch.allclose(v.conj().T @ v, torch.eye(n, dtype=torch.complex128), atol=1e-12)
    assert torch.allclose(lam.real, torch.full_like(lam.real, -0.5))


@pytest.mark.parametrize("n", [4, 16])
def test_dplr_half_system_keeps_one_mode_per_conjugate_pair(n):
    a, b = hippo_legs(n)
    half = hippo_legs_dplr(n)
    f = hippo_legs_nplr(n)
    v = half["V"]
    assert v.shape == (n, n // 2) and (half["Lambda"].imag > 0).all()
    # normal part = 2 Re(V_h Lambda_h V_h^*); the stored P, B are V_h^* P, V_h^* B
    normal = 2 * (v @ torch.diag(half["Lambda"]) @ v.conj().T).real
    assert torch.allclose(normal - torch.outer(f["P"], f["P"]), a, atol=1e-10)
    assert torch.allclose(half["B"], v.conj().T @ b.to(torch.complex128), atol=1e-12)
    assert torch.allclose(half["P"], v.conj().T @ f["P"].to(torch.complex128), atol=1e-12)


def test_matrix_power_and_krylov():
    a = torch.randn(3, 4, 4, dtype=F64) / 3
    for n in [1, 2, 5, 8, 13]:
        assert torch.allclose(matrix_power(a, n), torch.linalg.matrix_power(a, n), atol=1e-12)
    v = torch.randn(3, 4, dtype=F64)
    k = krylov(a, v, 11)
    assert k.shape == (3, 4, 11)
    for j in [0, 1, 7, 10]:
        assert torch.allclose(k[..., j], (torch.linalg.matrix_power(a, j) @ v[..., None])[..., 0], atol=1e-12)


# -- kernel -----------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_kernel_equals_direct_recurrence(causal):
    """Every length up to max_length gives the first taps of the SSM with C = C~ (I - Abar^L)^{-1}."""
    model = make(d_model=5, d_state=16, causal=causal, dtype=F64, max_length=100)
    abar, bbar, c = dense_ssm(model)
    for length in [1, 2, 7, 16, 33, 100]:
        h, ref = bbar.clone(), []
        for _ in range(length):
            ref.append(2 * (c * h).sum(-1).real)  # (n_kernels, H)
            h = (abar @ h[..., None])[..., 0]
        ref = torch.stack(ref, dim=-1)
        kernel = model.kernel(length)
        assert kernel.shape == (model.kernel.directions, 5, length) and kernel.dtype == F64
        assert torch.allclose(kernel, ref, rtol=0, atol=1e-10), length


def test_kernel_float32_close_to_float64():
    model = make(d_model=4, d_state=64, dtype=F64)
    k64 = model.kernel(256)
    k32 = model.kernel(256, dtype=torch.float32)
    assert k32.dtype == torch.float32
    assert (k32 - k64).abs().max() <= 1e-4 * k64.abs().max()


# -- recurrent form ---------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 37, 256])
def test_step_equals_forward_float64(length):
    model = make(dtype=F64)
    x = torch.randn(2, length, 6, dtype=F64)
    y = model(x)
    ys, state = step_all(model, x)
    assert torch.allclose(ys, y, rtol=0, atol=1e-8)
    assert state["h"].shape == (2, 6, 4) and state["h"].dtype == torch.complex128


def test_step_equals_forward_float32():
    model = make(d_model=4, d_state=64)
    x = torch.randn(2, 256, 4)
    y = model(x)
    ys, _ = step_all(model, x)
    assert ys.dtype == torch.float32
    assert (ys - y).abs().max() <= 1e-4 * y.abs().max()


def test_prefill_then_step_equals_forward():
    model = make(dtype=F64)
    x = torch.randn(3, 41, 6, dtype=F64)
    y = model(x)
    y_pre, state = model.prefill(x[:, :25])
    assert torch.allclose(y_pre, y[:, :25], rtol=0, atol=1e-8)
    _, state_steps = step_all(model, x[:, :25])
    assert torch.allclose(state["h"], state_steps["h"], rtol=0, atol=1e-10)
    y_rest, _ = step_all(model, x[:, 25:], state)
    assert torch.allclose(y_rest, y[:, 25:], rtol=0, atol=1e-8)


@pytest.mark.parametrize("split", [1, 20])
def test_prefill_from_nonempty_state(split):
    model = make(dtype=F64)
    x = torch.randn(2, 50, 6, dtype=F64)
    y = model(x)
    _, state = step_all(model, x[:, :split])
    y_tail, state_tail = model.prefill(x[:, split:], state)
    assert torch.allclose(y_tail, y[:, split:], rtol=0, atol=1e-8)
    _, state_all = step_all(model, x)
    assert torch.allclose(state_tail["h"], state_all["h"], rtol=0, atol=1e-10)


def test_causality():
    model = make(dtype=F64)
    x = torch.randn(1, 40, 6, dtype=F64)
    t = 23
    x2 = x.clone()
    x2[:, t] += 1.0
    y, y2 = model(x), model(x2)
    assert torch.allclose(y[:, :t], y2[:, :t], rtol=0, atol=1e-12)  # FFT rounding only
    assert not torch.allclose(y[:, t:], y2[:, t:])


def test_every_parameter_gets_a_gradient():
    for causal in (True, False):
        model = make(causal=causal)
        model(torch.randn(2, 20, 6)).square().sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (causal, name)


def test_optim_hints_and_parameter_dtypes():
    model = make(lr_scale=2.0, dtype=F64)
    hinted = {n for n, p in model.named_parameters() if hasattr(p, "_optim")}
    assert hinted == {"kernel.log_a_real", "kernel.a_imag", "kernel.P", "kernel.B", "kernel.log_dt"}
    assert model.kernel.P._optim == {"lr_scale": 2.0, "weight_decay": 0.0}
    assert all(p.dtype == F64 for p in model.parameters())
    dt = model.kernel.step_size(F64)
    assert (dt >= 1e-3 - 1e-12).all() and (dt <= 1e-1 + 1e-12).all()
    assert (model.kernel.eigenvalues(F64).real < 0).all()


# -- bidirectional, options, dtypes -----------------------------------------------------
def test_bidirectional_forward_and_no_recurrent_form():
    model = make(causal=False)
    x = torch.randn(2, 19, 6)
    assert model(x).shape == (2, 19, 6)
    # the future matters: perturbing the last token changes the first output
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(model(x)[:, 0], model(x2)[:, 0])
    with pytest.raises(ValueError, match="causal"):
        model.step(torch.randn(2, 6), {"batch_size": 2})
    with pytest.raises(ValueError):
        model.init_state(2)
    with pytest.raises(ValueError, match="causal"):
        model.prefill(x)


@pytest.mark.parametrize(
    "options, argument",
    [
        ({"d_state": 0}, "d_state"),
        ({"d_state": 7}, "d_state"),
        ({"dt_min": 0.0}, "dt_min"),
        ({"dt_min": 0.5, "dt_max": 0.1}, "dt_max"),
        ({"lr_scale": -1.0}, "lr_scale"),
        ({"lr_scale": 0.0}, "lr_scale"),
        ({"max_length": 0}, "max_length"),
        ({"dropout": 1.0}, "dropout"),
        ({"causal": "yes"}, "causal"),
        ({"dtype": torch.int32}, "dtype"),
        ({"d_model": 0}, "d_model"),
    ],
)
def test_bad_options_raise_value_error_naming_the_argument(options, argument):
    options = {"d_model": 8, **options}
    with pytest.raises(ValueError, match=argument):
        S4(options.pop("d_model"), **options)


def test_bad_inputs_raise_value_error():
    model = make()
    with pytest.raises(ValueError, match="x"):
        model(torch.randn(2, 5))
    with pytest.raises(ValueError, match="d_model"):
        model(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="state"):
        model.step(torch.randn(2, 6), model.init_state(3))
    with pytest.raises(ValueError, match="state"):
        model.step(torch.randn(2, 6), {"batch_size": 2, "h": torch.zeros(2, 6, 3, dtype=torch.complex64)})


def test_bfloat16_forward_and_step():
    model = make(dtype=torch.bfloat16)
    x = torch.randn(2, 16, 6, dtype=torch.bfloat16)
    y = model(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape and torch.isfinite(y.float()).all()
    y_t, state = model.step(x[:, 0], model.init_state(2))
    assert y_t.dtype == torch.bfloat16 and state["h"].dtype == torch.complex64


def test_registered_and_accounting():
    assert MIXERS["s4"] is S4
    model = make(d_model=16, d_state=8)
    assert model.state_size(10) == model.state_size(1000) == 16 * 8
    parts = model.flops_breakdown(64)
    assert set(parts) == {"matmul", "conv", "fft", "other"} and parts["conv"] == 0
    assert all(parts[key] > 0 for key in ("matmul", "fft", "other"))
    assert model.flops(64) == sum(parts.values())


@pytest.mark.parametrize("causal, length", [(True, 64), (True, 100), (False, 77)])
def test_matmul_flops_match_flop_counter(causal, length):
    model = make(d_model=16, d_state=8, causal=causal)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, length, 16))
    counted = counter.get_total_flops()
    # batch 1: the sequence's own work plus the kernel, made once per call
    assert abs(model.forward_flops_breakdown(length)["matmul"] - counted) <= 0.05 * counted


@pytest.mark.parametrize("basis_numbers", [1, 100, dplr_ssm.KRYLOV_BASIS_NUMBERS])  # many chunks, some, one
@pytest.mark.parametrize("length", [1, 2, 16, 17, 40])
def test_chunked_state_and_readout_equal_loops(length, basis_numbers, monkeypatch):
    monkeypatch.setattr(dplr_ssm, "KRYLOV_BASIS_NUMBERS", basis_numbers)
    torch.manual_seed(length)
    a = torch.randn(3, 4, 4, dtype=torch.complex128) * 0.3
    b, c = torch.randn(2, 3, 4, dtype=torch.complex128)
    u = torch.randn(2, 3, length, dtype=torch.complex128)
    h = torch.zeros(2, 3, 4, dtype=torch.complex128)
    for t in range(length):
        h = (a @ h.unsqueeze(-1)).squeeze(-1) + b * u[..., t, None]
    chunks = -(-length // chunk_length(length, 3 * 4))  # a basis of 3 channels x 4 modes per position
    assert chunks == 1 if basis_numbers >= 12 * length else (chunks > 1 or length <= 8)
    assert torch.allclose(final_state(a, b, u), h, atol=1e-12)
    h0 = torch.randn(2, 3, 4, dtype=torch.complex128)
    expected = torch.stack([(c * (matrix_power(a, t + 1) @ h0.unsqueeze(-1)).squeeze(-1)).sum(-1)
                            for t in range(length)], -1)
    assert torch.allclose(state_readout(a, c, h0, length), expected, atol=1e-12)


def test_forward_computes_no_dense_power_of_abar():
    """With d_state=64 and L=1024 a dense Abar^L (10 squarings of (m, m) matrices per channel)
    would exceed the Cauchy sums and the projection; the counted forward FLOPs match the
    accounting, which has no such product."""
    model = make(d_model=4, d_state=64, max_length=1024)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1024, 4))
    counted = counter.get_total_flops()
    parts = model.forward_flops_breakdown(1024)  # batch 1: the sequence's work and the kernel's
    assert abs(parts["matmul"] - counted) <= 0.05 * counted
    dense_power = 2 * 10 * 4 * 32 ** 3
    assert dense_power > 0.5 * counted


def test_shorter_lengths_take_the_first_taps_and_longer_ones_raise():
    model = make(dtype=F64, max_length=64)
    full = model.kernel(64)
    for length in (1, 10, 63):
        assert torch.allclose(model.kernel(length), full[..., :length], rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="x: expected a length of at most max_length=64, got 65"):
        model(torch.randn(1, 65, 6, dtype=F64))
    # The recurrence has no such limit: it continues the SSM past max_length.
    x = torch.randn(1, 70, 6, dtype=F64)
    ys, _ = step_all(model, x)
    assert ys.shape == (1, 70, 6) and torch.isfinite(ys).all()
    assert torch.allclose(ys[:, :64], model(x[:, :64]), rtol=0, atol=1e-8)


def test_initial_c_tilde_is_the_truncated_output_matrix():
    """C~ is stored, the recurrence's C is solved from it: C (I - Abar^L) = C~."""
    model = make(dtype=F64, max_length=50)
    abar, _, _ = dense_ssm(model)
    c = model.kernel.recurrent_output_matrix(F64)
    eye = torch.eye(abar.shape[-1], dtype=abar.dtype)
    rebuilt = (c.unsqueeze(-2) @ (eye - torch.linalg.matrix_power(abar, 50))).squeeze(-2)
    assert torch.allclose(rebuilt, model.kernel.discretize(F64)["C_tilde"][0], atol=1e-12)
    assert not c.requires_grad
