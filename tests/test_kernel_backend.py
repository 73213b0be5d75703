"""The one dispatch rule (seqarch.kernels.backend): for every op, a call outside its Triton limits takes the
twin under ``auto`` and raises a ValueError with the reason under forced ``triton``; a call within them
takes Triton when forced (on the interpreter), and ``backend(...)`` says so for the actual call."""

from __future__ import annotations

import importlib

import pytest
import torch

from seqarch.kernels import OPS, backend, select, use_backend
from seqarch.kernels.attention import attention, attention_reference
from seqarch.kernels.chunked_linear_attention import chunked_linear_attention, chunked_linear_attention_reference
from seqarch.kernels.delta_rule import delta_rule, delta_rule_reference
from seqarch.kernels.fft_conv import fft_conv, fft_conv_reference
from seqarch.kernels.monarch_matmul import monarch_matmul, monarch_matmul_reference
from seqarch.kernels.selective_scan import selective_scan, selective_scan_reference
from seqarch.kernels.short_conv import short_conv, short_conv_reference
from seqarch.kernels.ssd import ssd, ssd_reference
from seqarch.kernels.ssm_kernel import (
    cauchy_kernel,
    cauchy_kernel_reference,
    vandermonde_kernel,
    vandermonde_kernel_reference,
)

from helpers import needs_triton

# the module, not the function ``seqarch.kernels.backend`` that the package exports under the same name
backend_module = importlib.import_module("seqarch.kernels.backend")
C64, C128 = torch.complex64, torch.complex128


def _qkv(head_dim, dtype=torch.float32):
    return [torch.randn(1, 2, 8, head_dim, dtype=dtype) for _ in range(3)]


def _cauchy(dtype):
    gen = torch.Generator().manual_seed(0)
    numerators = torch.randn(2, 3, 4, dtype=dtype, generator=gen)
    a = 2 + torch.randn(9, dtype=dtype, generator=gen)
    b = torch.randn(2, 9, dtype=dtype, generator=gen) * 0.1
    lam = torch.randn(2, 4, dtype=dtype, generator=gen) - 1
    return numerators, a, b, lam


def _linear(d_k, dtype=torch.float32):
    """q, k, v (and, for the delta rule, beta) of a small linear-attention call."""
    return [torch.randn(1, 2, 9, d_k, dtype=dtype), torch.randn(1, 2, 9, d_k, dtype=dtype) * 0.1,
            torch.randn(1, 2, 9, 16, dtype=dtype)]


def _scan(dtype, state=2):
    u, z = torch.randn(1, 3, 5, dtype=dtype), torch.rand(1, 3, 5, dtype=dtype)
    return [u, z, -torch.rand(3, state, dtype=dtype), torch.randn(1, state, 5, dtype=dtype),
            torch.randn(1, state, 5, dtype=dtype)]


def _monarch(dtype):
    return torch.randn(3, 16, dtype=dtype), torch.randn(2, 8, 8, dtype=dtype), torch.randn(2, 8, 8, dtype=dtype)


def _ssd(dtype):
    gen = torch.Generator().manual_seed(0)
    x, B, C = (torch.randn(1, 5, *shape, generator=gen).to(dtype) for shape in ((2, 4), (1, 8), (1, 8)))
    dt = torch.rand(1, 5, 2, generator=gen).to(dtype)
    return x, dt, -torch.rand(2, generator=gen), B, C


# (op, function, twin, positional args, keyword args, the reason's message) for calls outside the Triton limits
OUTSIDE = [
    ("attention", attention, attention_reference, _qkv(24), {"causal": True},
     r"q: expected head_dim in \(16, 32, 64, 128\) for the Triton path, got 24"),
    ("attention", attention, attention_reference, _qkv(16, torch.float64), {"causal": False},
     "q: expected dtype float16, bfloat16 or float32 for the Triton path, got torch.float64"),
    ("fft_conv", fft_conv, fft_conv_reference, [torch.randn(1, 2, 100), torch.randn(2, 100)], {},
     r"u: expected a power-of-two length in \[256, 65536\] for the Triton path, got 100"),
    ("fft_conv", fft_conv, fft_conv_reference, [torch.randn(1, 2, 256, dtype=torch.float64), torch.randn(2, 9)], {},
     "u: expected dtype float32, bfloat16 or float16 for the Triton path, got torch.float64"),
    ("monarch_matmul", monarch_matmul, monarch_matmul_reference, _monarch(torch.float64), {},
     "x: expected dtype float16, bfloat16 or float32 for the Triton path, got torch.float64"),
    ("short_conv", short_conv, short_conv_reference, [torch.randn(1, 2, 12), torch.randn(2, 9)], {},
     "weight: expected kernel_size <= 8 for the Triton path, got 9"),
    ("short_conv", short_conv, short_conv_reference,
     [torch.randn(1, 2, 12, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)], {},
     "x: expected dtype float16, bfloat16 or float32 for the Triton path, got torch.float64"),
    ("selective_scan", selective_scan, selective_scan_reference, _scan(torch.float64), {},
     "u: expected dtype float16, bfloat16 or float32 for the Triton path, got torch.float64"),
    ("selective_scan", selective_scan, selective_scan_reference, _scan(torch.float32, 257), {},
     "A: expected state <= 256 for the Triton path, got 257"),
    ("vandermonde_kernel", vandermonde_kernel, vandermonde_kernel_reference,
     [torch.randn(2, 4, dtype=C128), -torch.rand(2, 4, dtype=C128), 10], {},
     "coef: expected dtype complex64 for the Triton path, got torch.complex128"),
    ("cauchy_kernel", cauchy_kernel, cauchy_kernel_reference, _cauchy(C128), {},
     "lam: expected dtype complex64 for the Triton path, got torch.complex128"),
    ("ssd", ssd, ssd_reference, _ssd(torch.float64), {},
     "x: expected dtype float16, bfloat16 or float32 for the Triton path, got torch.float64"),
    ("ssd", ssd, ssd_reference, _ssd(torch.float32), {"chunk_size": 24},
     r"chunk_size: expected one of \(16, 32, 64, 128\) for the Triton path, got 24"),
    ("chunked_linear_attention", chunked_linear_attention, chunked_linear_attention_reference,
     _linear(8, torch.float64), {},
     "q: expected dtype float16, bfloat16 or float32 for the Triton path, got torch.float64"),
    ("chunked_linear_attention", chunked_linear_attention, chunked_linear_attention_reference, _linear(130), {},
     "q: expected d_k <= 128 for the Triton path, got 130"),
    ("delta_rule", delta_rule, delta_rule_reference, [*_linear(130), torch.rand(1, 2, 9)], {},
     "q: expected d_k <= 128 for the Triton path, got 130"),
]
# (op, positional args, keyword args) of calls within the Triton limits
WITHIN = [
    ("attention", _qkv(16), {"causal": True}),
    ("fft_conv", [torch.randn(1, 2, 256), torch.randn(2, 9)], {}),
    ("monarch_matmul", _monarch(torch.float32), {}),
    ("short_conv", [torch.randn(1, 2, 12), torch.randn(2, 8)], {}),
    ("selective_scan", _scan(torch.float32), {}),
    ("vandermonde_kernel", [torch.randn(2, 4, dtype=C64), -torch.rand(2, 4, dtype=C64), 10], {}),
    ("cauchy_kernel", _cauchy(C64), {}),
    ("ssd", _ssd(torch.float32), {"chunk_size": 16}),
    ("chunked_linear_attention", _linear(8), {}),
    ("delta_rule", [*_linear(8), torch.rand(1, 2, 9)], {}),
]


def test_every_op_is_covered_and_declares_its_limits():
    assert {case[0] for case in OUTSIDE} == {case[0] for case in WITHIN} == set(OPS)
    for op in OPS:
        assert callable(backend_module.triton_limits_of(op))


@pytest.mark.parametrize("op, function, twin, args, kwargs, reason", OUTSIDE, ids=[c[0] for c in OUTSIDE])
def test_outside_the_limits_auto_takes_the_twin(monkeypatch, op, function, twin, args, kwargs, reason):
    with use_backend("auto"):
        assert backend(op, *args, **kwargs) == "torch"
        # as on a CUDA device, where the device rule alone would say triton: the op's limits still say torch
        monkeypatch.setattr(backend_module, "_device_backend", lambda device: "triton")
        assert backend(op, *args, **kwargs) == "torch"
        result = function(*args, **kwargs)
    torch.testing.assert_close(result, twin(*args, **kwargs))


@needs_triton
@pytest.mark.parametrize("op, function, twin, args, kwargs, reason", OUTSIDE, ids=[c[0] for c in OUTSIDE])
def test_outside_the_limits_forced_triton_raises_the_reason(op, function, twin, args, kwargs, reason):
    with use_backend("triton"):
        with pytest.raises(ValueError, match=reason):
            backend(op, *args, **kwargs)
        with pytest.raises(ValueError, match=reason):
            function(*args, **kwargs)
    with use_backend("torch"):
        assert backend(op, *args, **kwargs) == "torch"


@needs_triton
@pytest.mark.parametrize("op, args, kwargs", WITHIN, ids=[c[0] for c in WITHIN])
def test_within_the_limits_forced_triton_takes_triton(op, args, kwargs):
    with use_backend("triton"):
        assert backend(op, *args, **kwargs) == "triton"
    with use_backend("auto"):  # CPU tensors: the device rule sends them to the twin
        assert backend(op, *args, **kwargs) == "torch"
    with use_backend("torch"):
        assert backend(op, *args, **kwargs) == "torch"


@needs_triton
def test_device_level_answer_and_its_errors(monkeypatch):
    x = torch.randn(3)
    with use_backend("torch"):
        assert backend(x) == backend("cpu") == "torch"
    with use_backend("auto"):
        assert backend(x) == "torch"  # CPU tensors
    with use_backend("triton"):
        assert backend(x) == "triton"  # the interpreter is on (tests/conftest.py)
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="'triton' was forced for a tensor on cpu"):
            backend(x)
        with pytest.raises(ValueError, match="'triton' was forced for a tensor on cpu"):
            backend("short_conv", torch.randn(1, 2, 5), torch.randn(2, 3))


def test_select_and_bad_questions():
    x = torch.randn(3)
    with use_backend("auto"):
        assert select("short_conv", x, None) == "torch"
        assert select("short_conv", x, "x: some reason") == "torch"
    with use_backend("torch"):
        assert select("short_conv", x, "x: some reason") == "torch"
    with pytest.raises(ValueError, match="where: expected an op name"):
        backend("lstm", x)
    with pytest.raises(ValueError, match="op: expected one of attention"):
        backend_module.triton_limits_of("lstm")


@needs_triton
def test_forced_triton_message_names_the_op_and_the_way_out():
    with use_backend("triton"), pytest.raises(ValueError) as error:
        select("short_conv", torch.randn(3), "weight: expected kernel_size <= 8 for the Triton path, got 9")
    message = str(error.value)
    assert message.startswith("weight: expected kernel_size <= 8")
    assert "short_conv: 'triton' was forced" in message and "'auto'" in message
