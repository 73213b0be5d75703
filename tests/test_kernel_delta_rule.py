"""The delta-rule Triton kernels (under the interpreter without a GPU) against the chunked WY twin and the
float64 token-by-token recurrence: with and without the gate, odd lengths, batch 1, strided inputs,
states passed in and out, gradients of every input, zero-size calls and forced-backend errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqarch.kernels import backend
from seqarch.kernels.backend import use_backend
from seqarch.kernels.delta_rule import delta_rule, delta_rule_recurrence, delta_rule_reference, delta_rule_step

from helpers import needs_triton, relative_rms

pytestmark = needs_triton


def make(batch, heads, length, d_k, d_v, gated, *, strided=False, with_state=True, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        if strided:  # the last two axes swapped: no unit stride on the last axis
            return torch.randn(*shape[:-2], shape[-1], shape[-2], generator=generator).transpose(-1, -2)
        return torch.randn(*shape, generator=generator)

    q, k, v = rand(batch, heads, length, d_k), rand(batch, heads, length, d_k), rand(batch, heads, length, d_v)
    k = k / k.norm(dim=-1, keepdim=True)  # keeps k's strides
    beta = torch.rand(batch, heads, length, generator=generator)
    g = -torch.rand(batch, heads, length, generator=generator) if gated else None
    s0 = torch.randn(batch, heads, d_k, d_v, generator=generator) if with_state else None
    return [t if t is None else t.requires_grad_() for t in (q, k.detach(), v, beta, g, s0)]


def run(inputs, choice):
    leaves = [t if t is None else t.detach().clone().requires_grad_() for t in inputs]
    with use_backend(choice):
        out, state = delta_rule(*leaves)
    generator = torch.Generator().manual_seed(1)
    ((out * torch.randn(out.shape, generator=generator)).sum()
     + (state * torch.randn(state.shape, generator=generator)).sum()).backward()
    return out, state, [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 37, 8, 24), (2, 1, 16, 5, 70)])
def test_kernel_matches_twin_forward_and_backward(gated, shape):
    inputs = make(*shape, gated)
    out, state, grads = run(inputs, "triton")
    ref_out, ref_state, ref_grads = run(inputs, "torch")
    assert relative_rms(out, ref_out) < 1e-5 and relative_rms(state, ref_state) < 1e-5
    for got, expected in zip(grads, ref_grads):
        if expected is not None:
            assert relative_rms(got, expected) < 1e-5


@pytest.mark.parametrize("gated", [False, True])
def test_kernel_matches_the_float64_recurrence_on_strided_inputs_without_a_state(gated):
    inputs = [None if t is None else t.detach() for t in make(1, 2, 21, 8, 16, gated, strided=True, with_state=False)]
    assert not inputs[0].is_contiguous()
    with use_backend("triton"):
        out, state = delta_rule(*inputs)
    expected, expected_state = delta_rule_recurrence(*(None if t is None else t.double() for t in inputs))
    assert relative_rms(out.double(), expected) < 1e-5
    assert relative_rms(state.double(), expected_state) < 1e-5


def test_states_chain_across_calls():
    q, k, v, beta, g, _ = (None if t is None else t.detach() for t in make(1, 2, 40, 8, 16, True))
    with use_backend("triton"):
        whole, final = delta_rule(q, k, v, beta, g)
        parts = [t[:, :, :19] for t in (q, k, v, beta, g)], [t[:, :, 19:] for t in (q, k, v, beta, g)]
        first, middle = delta_rule(*parts[0])
        second, chained = delta_rule(*parts[1], middle)
    assert relative_rms(torch.cat([first, second], 2), whole) < 1e-5
    assert relative_rms(chained, final) < 1e-5


@pytest.mark.parametrize("choice", ["triton", "torch"])
def test_zero_size_calls(choice):
    q, k, v, beta, g, s0 = (t.detach() for t in make(1, 2, 0, 8, 16, True))
    with use_backend(choice):
        out, state = delta_rule(q, k, v, beta, g, s0)
        empty_batch, empty_state = delta_rule(q[:0], k[:0], v[:0], beta[:0])
    assert out.shape == (1, 2, 0, 16) and torch.equal(state, s0)
    assert empty_batch.shape == (0, 2, 0, 16) and empty_state.shape == (0, 2, 8, 16)


def test_forced_triton_names_what_it_cannot_take():
    q, k, v, beta, _, _ = (None if t is None else t.detach().double() for t in make(1, 1, 5, 8, 16, False))
    with use_backend("triton"), pytest.raises(ValueError, match="q: expected dtype"):
        delta_rule(q, k, v, beta)
    wide = F.normalize(torch.randn(1, 1, 5, 130), dim=-1)
    with use_backend("triton"), pytest.raises(ValueError, match="q: expected d_k <= 128"):
        delta_rule(wide, wide, torch.randn(1, 1, 5, 4), torch.rand(1, 1, 5))
    assert backend("delta_rule", q.float(), k.float(), v.float(), beta.float()) in ("triton", "torch")


def test_twin_is_the_cpu_path_under_auto():
    q, k, v, beta, g, s0 = (t.detach() for t in make(1, 2, 9, 8, 16, True))
    out, state = delta_rule(q, k, v, beta, g, s0)
    ref, ref_state = delta_rule_reference(q, k, v, beta, g, s0)
    assert torch.equal(out, ref) and torch.equal(state, ref_state)


@pytest.mark.parametrize("gated", [False, True])
def test_one_token_step_in_place_equals_the_new_state_step(gated):
    """``delta_rule_step(..., inplace=True)`` writes the new state into the one it was given and gives
    the step's output and state."""
    q, k, v = (torch.randn(2, 3, 8, dtype=torch.float64) for _ in range(3))
    k = F.normalize(k, dim=-1)
    beta, log_decay = torch.rand(2, 3, dtype=torch.float64), (-torch.rand(2, 3, dtype=torch.float64) if gated else None)
    state = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    o_new, new = delta_rule_step(q, k, v, beta, log_decay, state.clone())
    given = state.clone()
    o_in, written = delta_rule_step(q, k, v, beta, log_decay, given, inplace=True)
    assert written is given and not torch.equal(written, state)
    torch.testing.assert_close(written, new, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(o_in, o_new, rtol=1e-12, atol=1e-12)
