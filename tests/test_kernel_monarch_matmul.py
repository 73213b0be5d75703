"""Tests for seqarch.kernels.monarch_matmul: the fused Triton kernels (interpreter) against the twin,
the twin against the float64 dense matrix, input checks, backend choice, and MonarchLinear."""

from __future__ import annotations

import pytest
import torch

import seqarch.kernels.monarch_matmul as module
from seqarch.kernels import backend, use_backend
from seqarch.kernels.monarch_matmul import (
    monarch_matmul,
    monarch_matmul_reference,
    offtheshelf_monarch_matmul,
)
from seqarch.modules.monarch import MonarchLinear, monarch_mid_features

from helpers import relative_rms


def factors(in_features, out_features, nblocks, *, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    mid = monarch_mid_features(in_features, out_features, nblocks)
    w1 = torch.randn(nblocks, mid // nblocks, in_features // nblocks, generator=gen) / (in_features // nblocks) ** 0.5
    w2 = torch.randn(nblocks, out_features // nblocks, mid // nblocks, generator=gen) / (mid // nblocks) ** 0.5
    return [w.to(device, dtype).requires_grad_() for w in (w1, w2)]


def forward_and_grads(fn, x, w1, w2, grad_out):
    y = fn(x, w1, w2)
    return (y, *torch.autograd.grad(y, (x, w1, w2), grad_out))


# (in, out, nblocks, tokens): square, rectangular both ways, s = mid / nb^2 > 1, a non-power-of-two nblocks,
# and token counts that do not fill the last tile.
SHAPES = [(64, 64, 4, 20), (8, 12, 4, 5), (32, 8, 4, 7), (12, 20, 2, 3), (64, 128, 8, 17), (48, 48, 3, 9)]


@pytest.mark.parametrize("in_features,out_features,nblocks,tokens", SHAPES)
def test_triton_matches_twin_forward_and_grads(in_features, out_features, nblocks, tokens):
    w1, w2 = factors(in_features, out_features, nblocks)
    x = torch.randn(tokens, in_features, requires_grad=True)
    grad_out = torch.randn(out_features, tokens).t()  # a non-contiguous gradient, as autograd may hand over
    with use_backend("triton"):
        assert backend(x) == "triton"
        got = forward_and_grads(monarch_matmul, x, w1, w2, grad_out)
    want = forward_and_grads(monarch_matmul_reference, x, w1, w2, grad_out)
    for name, g, w in zip(["y", "dx", "dblkdiag1", "dblkdiag2"], got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert relative_rms(g, w) <= 1e-4, name


def test_triton_half_precision_against_float32_twin():
    # float16: the interpreter's bfloat16 tl.dot is broken (Triton 3.9 returns garbage even for a plain
    # 2-D dot), so bfloat16 is left to the GPU tests; float16 takes the same cast and store paths.
    w1, w2 = factors(64, 64, 4, dtype=torch.float16)
    x = torch.randn(20, 64, dtype=torch.float16, requires_grad=True)
    grad_out = torch.randn(20, 64, dtype=torch.float16)
    with use_backend("triton"):
        got = forward_and_grads(monarch_matmul, x, w1, w2, grad_out)
    ref = [t.detach().float().requires_grad_() for t in (x, w1, w2)]
    want = forward_and_grads(monarch_matmul_reference, *ref, grad_out.float())
    for name, g, w in zip(["y", "dx", "dblkdiag1", "dblkdiag2"], got, want):
        assert g.dtype == torch.float16, name
        assert relative_rms(g, w) <= 1e-2, name


def test_triton_with_several_output_block_groups(monkeypatch):
    # A small register budget splits the output blocks over several programs (as at
    # nblocks = 64 on a GPU): dx then sums per-group shares, and s is padded to keep dots >= 16.
    monkeypatch.setattr(module, "_REGISTER_BUDGET", 256)
    tiles = module._tiles(8, 8, 8, 8, torch.device("cpu"))
    assert tiles.group < tiles.nb_pad and tiles.s_pad > 1
    w1, w2 = factors(64, 64, 8, seed=3)
    x = torch.randn(2, 9, 64, requires_grad=True)  # leading dims are flattened
    grad_out = torch.randn(2, 9, 64)
    with use_backend("triton"):
        got = forward_and_grads(monarch_matmul, x, w1, w2, grad_out)
    want = forward_and_grads(monarch_matmul_reference, x, w1, w2, grad_out)
    for name, g, w in zip(["y", "dx", "dblkdiag1", "dblkdiag2"], got, want):
        assert relative_rms(g, w) <= 1e-4, name


def test_weight_grad_kernel_split_over_token_ranges():
    tokens, nb, rows, cols = 70, 3, 5, 6
    grads, acts = torch.randn(tokens, nb * rows), torch.randn(tokens, nb * cols)
    like = torch.empty(0)
    want = torch.einsum("tbm,tbn->bmn", grads.reshape(tokens, nb, rows), acts.reshape(tokens, nb, cols))
    for target_programs in (1, 64):  # one token range, then several
        got = module._blockdiag_weight_grad(grads, acts, nb, like, target_programs=target_programs)
        assert relative_rms(got, want) <= 1e-5


@pytest.mark.parametrize("in_features,out_features,nblocks,tokens", SHAPES)
def test_twin_matches_float64_dense_matrix(in_features, out_features, nblocks, tokens):
    w1, w2 = factors(in_features, out_features, nblocks, dtype=torch.float64, seed=1)
    x = torch.randn(tokens, in_features, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(tokens, out_features, dtype=torch.float64)
    # The dense matrix built entry by entry from the formula, independently of the twin.
    nb, s = nblocks, w1.shape[1] // nblocks
    ib, ob = in_features // nb, out_features // nb
    dense = torch.zeros(out_features, in_features, dtype=torch.float64)
    for k in range(nb):
        for l in range(nb):
            for rem in range(s):
                # L[k, :, l*s + rem] (outer) R[l, rem*nb + k, :]
                dense[k * ob:(k + 1) * ob, l * ib:(l + 1) * ib] += torch.outer(w2[k, :, l * s + rem],
                                                                             w1[l, rem * nb + k, :])
    got = forward_and_grads(monarch_matmul_reference, x, w1, w2, grad_out)
    # autograd through the entry-by-entry construction gives the weight gradients of the dense map
    want = forward_and_grads(lambda x, w1, w2: x @ dense.T, x, w1, w2, grad_out)
    for name, g, w in zip(["y", "dx", "dblkdiag1", "dblkdiag2"], got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=name)
    # and the off-the-shelf baseline computes the same product
    torch.testing.assert_close(offtheshelf_monarch_matmul(x, w1, w2), want[0], rtol=1e-12, atol=1e-12)


def test_float64_raises_on_the_triton_path_and_takes_the_twin_under_auto():
    w1, w2 = factors(16, 16, 2, dtype=torch.float64)
    x = torch.randn(3, 16, dtype=torch.float64)
    with use_backend("triton"), pytest.raises(ValueError, match="x: expected dtype float16, bfloat16 or float32 for "
                                                               "the Triton path, got torch.float64"):
        monarch_matmul(x, w1, w2)
    with use_backend("auto"):
        assert backend("monarch_matmul", x, w1, w2) == "torch"
        torch.testing.assert_close(monarch_matmul(x, w1, w2), monarch_matmul_reference(x, w1, w2))


@pytest.mark.parametrize("choice", ["torch", "triton"])
def test_no_tokens_give_an_empty_result(choice):
    w1, w2 = factors(16, 24, 2)
    x = torch.randn(2, 0, 16, requires_grad=True)
    with use_backend(choice):
        y = monarch_matmul(x, w1, w2)
    assert y.shape == (2, 0, 24)
    grads = torch.autograd.grad(y.sum(), (x, w1, w2))
    assert [g.shape for g in grads] == [x.shape, w1.shape, w2.shape]
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_backend_choice_is_honoured(monkeypatch):
    calls = []
    monkeypatch.setattr(module.MonarchMatmulFunction, "apply", lambda *a: calls.append("triton") or module._forward(*a))
    w1, w2 = factors(16, 16, 2)
    x = torch.randn(3, 16)
    with use_backend("torch"):
        monarch_matmul(x, w1, w2)
    assert calls == []
    with use_backend("triton"):
        monarch_matmul(x, w1, w2)
    assert calls == ["triton"]


def _bad_cases():
    w1, w2 = (w.detach() for w in factors(16, 16, 2))
    x = torch.randn(3, 16)
    return [
        ((x[:, :12], w1, w2), "x"),
        ((torch.tensor(1.0), w1, w2), "x"),
        ((x.int(), w1.int(), w2.int()), "x"),
        ((x, w1[0], w2), "blkdiag1"),
        ((x, torch.randn(2, 7, 8), w2), "blkdiag1"),  # mid / nblocks = 7 is not a multiple of nblocks
        ((x, w1.double(), w2), "blkdiag1"),
        ((x, w1, torch.randn(3, 8, 8)), "blkdiag2"),
        ((x, w1, torch.randn(2, 8, 4)), "blkdiag2"),
        ((x, w1, w2.half()), "blkdiag2"),
        ((x, w1, "L"), "blkdiag2"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs_raise(case):
    args, argument = _bad_cases()[case]
    for choice in ("torch", "triton"):
        with use_backend(choice), pytest.raises(ValueError, match=rf"^{argument}: expected"):
            monarch_matmul(*args)


@pytest.mark.parametrize("in_features,out_features,nblocks", [(16, 24, 4), (32, 32, 2)])
def test_layer_backend_swap_changes_output_and_loss_by_at_most_1e4(in_features, out_features, nblocks):
    torch.manual_seed(0)
    layer = MonarchLinear(in_features, out_features, nblocks)
    x = torch.randn(2, 5, in_features)
    results = {}
    for choice in ("torch", "triton"):
        layer.zero_grad()
        with use_backend(choice):
            y = layer(x)
        loss = y.tanh().sum()
        loss.backward()
        results[choice] = (y.detach(), loss.detach(), *(p.grad.clone() for p in layer.parameters()))
    assert len(results["triton"]) == 5
    for got, want in zip(results["triton"], results["torch"]):
        assert relative_rms(got, want) <= 1e-4


def test_layer_under_autocast_runs_the_product_in_the_autocast_dtype(monkeypatch):
    import seqarch.modules.monarch as layer_module

    seen = []
    product = layer_module.monarch_matmul
    monkeypatch.setattr(layer_module, "monarch_matmul", lambda *a: seen.append({t.dtype for t in a}) or product(*a))
    torch.manual_seed(0)
    layer = MonarchLinear(32, 32, 4)
    x = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert seen == [{torch.bfloat16}]
    assert 0 < relative_rms(y.float(), layer(x)) <= 1e-2
    y.float().square().sum().backward()
    assert layer.blkdiag1.grad.dtype == torch.float32 and layer.blkdiag1.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestGPU:
    @pytest.mark.parametrize("nblocks", [4, 16, 64])
    def test_gpu_bf16_width_4096_8k_tokens_forward_backward(self, nblocks):
        width, tokens = 4096, 8192
        w1, w2 = factors(width, width, nblocks, dtype=torch.bfloat16, device="cuda")
        x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad_out = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
        with use_backend("auto"):
            assert backend(x) == "triton"
            got = forward_and_grads(monarch_matmul, x, w1, w2, grad_out)
        ref = [t.detach().float().requires_grad_() for t in (x, w1, w2)]
        want = forward_and_grads(monarch_matmul_reference, *ref, grad_out.float())
        for name, g, w in zip(["y", "dx", "dblkdiag1", "dblkdiag2"], got, want):
            assert g.dtype == torch.bfloat16, name
            assert relative_rms(g.float(), w) <= 1e-2, name

    def test_gpu_float32_rectangular_matches_twin_tightly(self):
        w1, w2 = factors(1024, 3072, 8, device="cuda")
        x = torch.randn(4, 300, 1024, device="cuda", requires_grad=True)
        grad_out = torch.randn(4, 300, 3072, device="cuda")
        got = forward_and_grads(monarch_matmul, x, w1, w2, grad_out)
        want = forward_and_grads(monarch_matmul_reference, x, w1, w2, grad_out)
        for g, w in zip(got, want):
            assert relative_rms(g, w) <= 1e-5

    def test_gpu_layer_under_autocast(self):
        layer = MonarchLinear(1024, 1024, 32, device="cuda")
        x = torch.randn(2, 256, 1024, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x)  # the product runs in bfloat16 (Triton), the float32 bias add promotes
        y.float().square().mean().backward()
        assert layer.blkdiag1.grad.dtype == torch.float32
        assert relative_rms(y.float(), x @ layer.dense_matrix().T + layer.bias) <= 1e-2
