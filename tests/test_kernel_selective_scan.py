"""selective_scan: the Triton kernels (interpreter) and the chunked twin against a float64 sequential
recurrence; gradients, initial and final states, odd lengths, strides, empty calls, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqarch.kernels import selective_scan as op
from seqarch.kernels.backend import use_backend
from seqarch.kernels.selective_scan import selective_scan, selective_scan_reference

from helpers import relative_rms

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "initial_state")


def recurrence(u, delta, A, B, C, D=None, z=None, initial_state=None):
    """The definition, token by token, in float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)
    if initial_state is not None:
        h = initial_state.double()
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        y = (h * C[:, None, :, t]).sum(-1)
        if D is not None:
            y = y + D.double() * u[..., t]
        if z is not None:
            y = y * F.silu(z[..., t].double())
        ys.append(y)
    return torch.stack(ys, -1) if ys else u[..., :0], h


def inputs(batch, channels, length, state, dtype=torch.float64, seed=0, delta_scale=0.2, gate=True):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    delta = (torch.rand(batch, channels, length, generator=g, dtype=torch.float64) * delta_scale).to(dtype)
    A = -torch.arange(1, state + 1, dtype=torch.float64).repeat(channels, 1).to(dtype)
    return {"u": randn(batch, channels, length), "delta": delta, "A": A, "B": randn(batch, state, length),
            "C": randn(batch, state, length), "D": randn(channels),
            "z": randn(batch, channels, length) if gate else None,
            "initial_state": randn(batch, channels, state)}


@pytest.mark.parametrize("length", [1, 7, 100, 129])
def test_twin_equals_the_recurrence(length):
    args = inputs(2, 3, length, 5)
    y, last = selective_scan_reference(**args)
    y_ref, last_ref = recurrence(**args)
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=1e-10)
    assert torch.allclose(last, last_ref, atol=1e-12, rtol=1e-10)
    y32, last32 = selective_scan_reference(**{k: v.float() for k, v in args.items()})
    assert y32.dtype == last32.dtype == torch.float32
    assert relative_rms(y32.double(), y_ref) < 1e-5


def test_twin_is_exact_at_large_steps():
    """delta * |A| summed over a chunk far beyond exp's float32 range: the twin runs the recurrence itself,
    so nothing overflows and it stays exact."""
    args = inputs(1, 2, 100, 16, dtype=torch.float32, delta_scale=8.0)
    y, last = selective_scan_reference(**args)
    y_ref, last_ref = recurrence(**args)
    assert torch.isfinite(y).all()
    assert relative_rms(y.double(), y_ref) < 1e-5
    assert relative_rms(last.double(), last_ref) < 1e-5


@pytest.mark.parametrize("delta_scale,state", [(0.2, 4), (60.0, 4), (0.2, 16)])
def test_twin_gradients_equal_the_recurrence(delta_scale, state):
    """The twin's custom backward against autograd through the float64 recurrence, small and large steps."""
    args = inputs(2, 3, 70, state, delta_scale=delta_scale)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    ref = {k: v.clone().requires_grad_() for k, v in args.items()}
    y, last = selective_scan_reference(**leaves)
    y_ref, last_ref = recurrence(**ref)
    dy, dlast = torch.randn_like(y), torch.randn_like(last)
    grads = torch.autograd.grad((y * dy).sum() + (last * dlast).sum(), list(leaves.values()))
    grads_ref = torch.autograd.grad((y_ref * dy).sum() + (last_ref * dlast).sum(), list(ref.values()))
    for name, got, want in zip(NAMES, grads, grads_ref, strict=True):
        assert torch.allclose(got, want, atol=1e-10, rtol=1e-8), name


@pytest.mark.parametrize("tokens", [1, 3, 64])
def test_twin_chunking_and_kept_states_do_not_change_the_result(monkeypatch, tokens):
    """Chunks of 1, 3 and 64 tokens (state 8: a state kept every 8, 3 and 1 chunks, the ones between
    recomputed by the backward; 29 tokens leave a partial last chunk): outputs and every gradient equal
    the float64 recurrence's."""
    monkeypatch.setattr(op, "MAX_CHUNK_REFERENCE", tokens)
    assert op._chunk_length(2, 3, 8) == tokens
    args = inputs(2, 3, 29, 8)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    ref = {k: v.clone().requires_grad_() for k, v in args.items()}
    y, last = selective_scan_reference(**leaves)
    y_ref, last_ref = recurrence(**ref)
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=1e-10)
    dy, dlast = torch.randn_like(y), torch.randn_like(last)
    grads = torch.autograd.grad((y * dy).sum() + (last * dlast).sum(), list(leaves.values()))
    grads_ref = torch.autograd.grad((y_ref * dy).sum() + (last_ref * dlast).sum(), list(ref.values()))
    for name, got, want in zip(NAMES, grads, grads_ref, strict=True):
        assert torch.allclose(got, want, atol=1e-10, rtol=1e-8), name


def test_twin_gradcheck(monkeypatch):
    """torch.autograd.gradcheck of the custom backward in float64 (two-token chunks, kept states every
    two chunks, a partial last chunk), with only some inputs requiring gradients."""
    monkeypatch.setattr(op, "MAX_CHUNK_REFERENCE", 2)
    args = inputs(1, 2, 5, 3)
    leaves = [args[k].clone().requires_grad_(k != "C") for k in NAMES]
    assert torch.autograd.gradcheck(lambda *a: selective_scan_reference(*a), leaves)
    # an output whose gradient is not asked for (only the last state)
    assert torch.autograd.gradcheck(lambda *a: selective_scan_reference(*a)[1], leaves)


@pytest.mark.parametrize("length", [1, 7, 100, 129])
def test_triton_forward_equals_twin_and_recurrence(length):
    args = inputs(1, 3, length, 4, dtype=torch.float32, seed=length)
    with use_backend("triton"):
        y, last = selective_scan(**args)
    y_twin, last_twin = selective_scan_reference(**args)
    y_ref, last_ref = recurrence(**args)
    assert last.dtype == torch.float32
    assert relative_rms(y, y_twin) < 1e-5 and relative_rms(last, last_twin) < 1e-5
    assert relative_rms(y.double(), y_ref) < 1e-5 and relative_rms(last.double(), last_ref) < 1e-5


@pytest.mark.parametrize("length,gate", [(7, True), (129, False)])
def test_triton_gradients_equal_the_recurrence(length, gate):
    """129 tokens: three checkpointed chunks of 64, the last of one token."""
    args = inputs(1, 3, length, 4, dtype=torch.float32, seed=length, gate=gate)
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in args.items()}
    ref = {k: None if v is None else v.double().requires_grad_() for k, v in args.items()}
    with use_backend("triton"):
        y, last = selective_scan(**leaves)
    y_ref, last_ref = recurrence(**ref)
    dy, dlast = torch.randn_like(y), torch.randn_like(last)
    wanted = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad((y * dy).sum() + (last * dlast).sum(), [leaves[k] for k in wanted])
    grads_ref = torch.autograd.grad((y_ref * dy.double()).sum() + (last_ref * dlast.double()).sum(),
                                    [ref[k] for k in wanted])
    for name, got, want in zip(wanted, grads, grads_ref, strict=True):
        assert relative_rms(got.double(), want) < 1e-5, name


def test_non_contiguous_inputs_and_no_optional_arguments():
    """Channels-last views (as the mixer hands them over), no D, z or initial state."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 9, 6, generator=g).transpose(1, 2)  # (2, 6, 9), stride 1 on channels
    delta = torch.rand(2, 9, 6, generator=g).transpose(1, 2) * 0.3
    bc = torch.randn(2, 9, 8, generator=g).transpose(1, 2)  # B and C: halves of one projection
    B, C = bc[:, :4], bc[:, 4:]
    A = -torch.rand(12, 4, generator=g)[::2]  # (6, 4), row stride 8
    with use_backend("triton"):
        y, last = selective_scan(u, delta, A, B, C)
    y_ref, last_ref = recurrence(u, delta, A, B, C)
    assert relative_rms(y.double(), y_ref) < 1e-5 and relative_rms(last.double(), last_ref) < 1e-5
    y_twin, _ = selective_scan_reference(u, delta, A, B, C)
    assert relative_rms(y_twin.double(), y_ref) < 1e-5


def test_half_precision_accumulates_in_float32():
    args = {k: v.half() for k, v in inputs(1, 3, 40, 4, dtype=torch.float32).items()}
    with use_backend("triton"):
        y, last = selective_scan(**args)
    y_twin, last_twin = selective_scan_reference(**args)
    y_ref, last_ref = recurrence(**args)
    assert y.dtype == torch.float16 and last.dtype == last_twin.dtype == torch.float32
    assert relative_rms(y.double(), y_ref) < 3e-3 and relative_rms(y_twin.double(), y_ref) < 3e-3
    assert relative_rms(last.double(), last_ref) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_inputs(backend):
    args = inputs(2, 3, 0, 4, dtype=torch.float32)
    with use_backend(backend):
        y, last = selective_scan(**args)
    assert y.shape == (2, 3, 0) and torch.equal(last, args["initial_state"])
    no_batch = inputs(0, 3, 5, 4, dtype=torch.float32)
    with use_backend(backend):
        y, last = selective_scan(**no_batch)
    assert y.shape == (0, 3, 5) and last.shape == (0, 3, 4)


def test_forced_triton_refuses_float64_and_auto_takes_the_twin():
    args = inputs(1, 2, 3, 2)
    with use_backend("triton"), pytest.raises(ValueError, match="u: expected dtype .* for the Triton path"):
        selective_scan(**args)
    y, _ = selective_scan(**args)  # auto on CPU: the twin
    assert torch.allclose(y, recurrence(**args)[0])
    assert op.triton_limits(**args) is not None


@pytest.mark.parametrize("change,argument", [
    ({"u": torch.randn(2, 3)}, "u"), ({"delta": torch.rand(1, 3, 6)}, "delta"), ({"A": torch.randn(4, 2)}, "A"),
    ({"A": torch.randn(3, 0)}, "A"), ({"B": torch.randn(1, 3, 5)}, "B"), ({"C": torch.randn(1, 2, 4)}, "C"),
    ({"D": torch.randn(2)}, "D"), ({"z": torch.randn(1, 3, 4)}, "z"), ({"initial_state": torch.randn(1, 3, 3)},
                                                                      "initial_state"),
    ({"B": torch.randn(1, 2, 5, dtype=torch.float64)}, "B"), ({"u": torch.ones(1, 3, 5, dtype=torch.int64)}, "u"),
])
def test_bad_inputs_name_the_argument(change, argument):
    args = {**inputs(1, 3, 5, 2, dtype=torch.float32), **change}
    with pytest.raises(ValueError, match=f"^{argument}:"):
        selective_scan(**args)
