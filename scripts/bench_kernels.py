"""Kernel microbenchmarks: every op in ``seqarch.kernels`` against its best off-the-shelf alternative.

    python scripts/bench_kernels.py                          # every op, target shapes (GPU) or CPU shapes
    python scripts/bench_kernels.py --ops attention fft_conv --quick
    python scripts/bench_kernels.py --threads 1              # CPU: steadier times on a busy machine
    bash scripts/gpu_check.sh                                # on a lent GPU: GPU tests, then this script

For each registered case and mode (forward, forward+backward) it measures the
public kernel function ("ours") and the off-the-shelf alternative: the time
(``triton.testing.do_bench``, median of warm runs, on a GPU), TFLOP/s or GB/s (the
formula of each op is stated in ``OPS`` and in the report), the speed-up
``off-the-shelf time / our time``, the share of the device's peak (from
``seqarch.devices.DEVICE_PEAKS``; '-' for an unknown device), the peak memory of both
(``torch.cuda.max_memory_allocated``) and whether the op's speed target is met.

On a CPU (no CUDA) ``do_bench`` cannot run and every public function dispatches
to its PyTorch twin, so the script times the twins against the off-the-shelf
functions with ``benchlib.median_time`` at small shapes and says that the Triton
numbers need a GPU. A case that raises records the error in its row and the rest
still runs; the report is rewritten after every row, so a run cut short by a
timeout still leaves its finished rows. Writes ``bench_kernels.json`` and
``bench_kernels.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import benchlib
import torch

from seqarch.devices import device_peaks
from seqarch.kernels import backend
from seqarch.kernels.attention import attention, offtheshelf_attention
from seqarch.kernels.chunked_linear_attention import chunked_linear_attention, chunked_linear_attention_reference
from seqarch.kernels.delta_rule import delta_rule, delta_rule_reference
from seqarch.kernels.fft_conv import fft_conv, offtheshelf_fft_conv
from seqarch.kernels.monarch_matmul import monarch_matmul, offtheshelf_monarch_matmul
from seqarch.kernels.selective_scan import offtheshelf_selective_scan, selective_scan
from seqarch.kernels.short_conv import offtheshelf_short_conv, short_conv
from seqarch.kernels.ssd import ssd, ssd_recurrence
from seqarch.kernels.ssm_kernel import (
    cauchy_kernel,
    offtheshelf_cauchy_kernel,
    offtheshelf_vandermonde_kernel,
    vandermonde_kernel,
)

MODES = ("fwd", "fwd+bwd")
SIZES = ("full", "quick", "cpu", "tiny")  # GPU targets, GPU --quick, CPU default, CPU --quick
# The device peaks live in seqarch.devices, shared with the training MFU.
CPU_NOTE = ("Triton numbers need a GPU: `triton.testing.do_bench` needs CUDA, and on a CPU every public kernel "
            "function runs its PyTorch twin. These rows time the twins against the off-the-shelf functions "
            "(benchlib.median_time) at small CPU shapes; memory is not measured and no target is checked.")


@dataclass(frozen=True)
class Case:
    """One shape of one op: ``make(device, dtype)`` builds the keyword arguments both functions take."""

    label: str
    make: Callable[[torch.device, torch.dtype], dict]
    note: str = ""


@dataclass(frozen=True)
class Op:
    """A registered op: our public function, the off-the-shelf one, how to count its work, its target."""

    ours: Callable
    theirs: Callable
    baseline: str
    grad_args: tuple[str, ...]  # the inputs that get gradients in the forward+backward mode
    metric: str  # "flops" (reported in TFLOP/s) or "bytes" (GB/s)
    formula: str
    work: Callable[[dict, torch.Tensor, str], float] | None  # (inputs, output, mode) -> FLOPs; None: io_bytes
    cases: Callable[[str], list[Case]]  # size -> cases
    targets: dict[str, list[tuple[str, str, float]]]  # mode -> [(field, ">=" | "<=", threshold)]
    fixed_dtype: torch.dtype | None = None  # the op's dtype whatever --dtype says


# -- work formulas ---------------------------------------------------------------------------
def io_bytes(inputs: dict, out: torch.Tensor, mode: str, grad_args: tuple[str, ...]) -> float:
    """Least HBM traffic: forward reads the inputs and writes the output; the backward reads the
    output gradient and the inputs again and writes the input gradients."""
    read = sum(t.nbytes for t in inputs.values() if isinstance(t, torch.Tensor))
    if mode == "fwd":
        return read + out.nbytes
    return 2 * read + 2 * out.nbytes + sum(inputs[name].nbytes for name in grad_args)


def attention_flops(inputs: dict, out: torch.Tensor, mode: str) -> float:
    batch, heads, length_q, head_dim = inputs["q"].shape
    flops = 4 * batch * heads * length_q * inputs["k"].shape[2] * head_dim * (0.5 if inputs["causal"] else 1.0)
    return flops if mode == "fwd" else 3.5 * flops


def monarch_flops(inputs: dict, out: torch.Tensor, mode: str) -> float:
    tokens = inputs["x"].numel() // inputs["x"].shape[-1]
    flops = 2 * tokens * (inputs["blkdiag1"].numel() + inputs["blkdiag2"].numel())
    return flops if mode == "fwd" else 3 * flops


def vandermonde_flops(inputs: dict, out: torch.Tensor, mode: str) -> float:
    flops = 8 * inputs["coef"].numel() * inputs["length"]
    return flops if mode == "fwd" else 3 * flops


def cauchy_flops(inputs: dict, out: torch.Tensor, mode: str) -> float:
    flops = 8 * inputs["numerators"].numel() * inputs["a"].shape[0]
    return flops if mode == "fwd" else 3 * flops


def ssm_flops(inputs: dict, out: torch.Tensor, mode: str) -> float:
    return (vandermonde_flops if "coef" in inputs else cauchy_flops)(inputs, out, mode)


# -- shapes ----------------------------------------------------------------------------------
def _randn(*shape, device, dtype, scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype)


def attention_cases(size: str) -> list[Case]:
    batch, heads, length, head_dim = {"full": (2, 16, 8192, 128), "quick": (1, 16, 2048, 128),
                                      "cpu": (1, 4, 512, 64), "tiny": (1, 2, 128, 32)}[size]

    def make(device, dtype, causal):
        q, k, v = (_randn(batch, heads, length, head_dim, device=device, dtype=dtype) for _ in range(3))
        return {"q": q, "k": k, "v": v, "causal": causal}

    return [Case(f"b={batch} h={heads} L={length} d={head_dim} {'causal' if causal else 'non-causal'}",
                 functools.partial(make, causal=causal)) for causal in (True, False)]


def fft_conv_cases(size: str) -> list[Case]:
    batch, channels, lengths = {"full": (64, 768, (1024, 4096, 16384)), "quick": (8, 768, (1024, 4096)),
                                "cpu": (2, 64, (1024, 4096)), "tiny": (1, 8, (256,))}[size]

    def make(device, dtype, length):
        return {"u": _randn(batch, channels, length, device=device, dtype=dtype),
                "k": _randn(channels, length, device=device, dtype=dtype, scale=length ** -0.5), "causal": True}

    # The torch.fft baseline's forward+backward at 16k holds ~0.6 GiB per sequence (peak RSS on a CPU at
    # batch 2): ~39 GiB at batch 64, which fits an 80 GB H100, so the target batch stays.
    note = {16384: "batch 64 kept: the off-the-shelf fwd+bwd needs ~39 GiB"}
    return [Case(f"b={batch} c={channels} L={n} causal, full-length filter", functools.partial(make, length=n),
                 note.get(n, "") if size == "full" else "") for n in lengths]


def monarch_cases(size: str) -> list[Case]:
    tokens, width, nblocks = {"full": (16384, 4096, (4, 64)), "quick": (4096, 4096, (4, 64)),
                              "cpu": (1024, 1024, (4, 32)), "tiny": (64, 256, (4, 16))}[size]

    def make(device, dtype, nb):
        block = width // nb
        return {"x": _randn(tokens, width, device=device, dtype=dtype),
                "blkdiag1": _randn(nb, block, block, device=device, dtype=dtype, scale=block ** -0.5),
                "blkdiag2": _randn(nb, block, block, device=device, dtype=dtype, scale=block ** -0.5)}

    return [Case(f"tokens={tokens} width={width} nblocks={nb}", functools.partial(make, nb=nb)) for nb in nblocks]


def _ssm_log_z(channels: int, state: int, device) -> torch.Tensor:
    """S4D-Lin eigenvalues ``A_n = -1/2 + i pi n`` times log-uniform steps in [1e-3, 1e-1]."""
    a = torch.complex(torch.full((state,), -0.5), math.pi * torch.arange(state, dtype=torch.float32))
    dt = torch.exp(torch.empty(channels, 1).uniform_(math.log(1e-3), math.log(1e-1)))
    return (dt * a).to(device)


def ssm_cases(size: str) -> list[Case]:
    channels, state, length = {"full": (1024, 64, 16384), "quick": (256, 64, 4096),
                               "cpu": (64, 32, 2048), "tiny": (8, 8, 256)}[size]
    sums = 4  # S4's four Cauchy sums (C B, C P, P* B, P* P) for one output channel

    def complex_randn(*shape, device):
        return torch.randn(*shape, dtype=torch.complex64, device=device)

    def vandermonde(device, dtype):
        return {"coef": complex_randn(channels, state, device=device), "log_z": _ssm_log_z(channels, state, device),
                "length": length}

    def cauchy(device, dtype):
        angle = torch.arange(length, dtype=torch.float32) * (-2 * math.pi / length)
        z = torch.polar(torch.ones_like(angle), angle)
        dt = torch.exp(torch.empty(channels, 1).uniform_(math.log(1e-3), math.log(1e-1)))
        lam = torch.complex(torch.full((state,), -0.5), math.pi * torch.arange(state, dtype=torch.float32))
        return {"numerators": complex_randn(channels, sums, state, device=device), "a": (2 * (1 - z)).to(device),
                "b": (dt * (1 + z)).to(device), "lam": lam.expand(channels, state).contiguous().to(device)}

    shape = f"c={channels} N={state} L={length}"
    return [Case(f"vandermonde (S4D) {shape}", vandermonde, "complex64 (fp32) whatever --dtype"),
            Case(f"cauchy (S4) {shape} sums={sums}", cauchy, "complex64 (fp32) whatever --dtype")]


def short_conv_cases(size: str) -> list[Case]:
    shapes = {"full": [(16, 2304, 8192), (8, 4096, 4096)], "quick": [(4, 2304, 4096)], "cpu": [(2, 256, 2048)],
              "tiny": [(1, 16, 256)]}[size]

    def make(device, dtype, batch, channels, length):
        return {"x": _randn(batch, channels, length, device=device, dtype=dtype),
                "weight": _randn(channels, 4, device=device, dtype=dtype, scale=0.5),
                "bias": _randn(channels, device=device, dtype=dtype)}

    return [Case(f"b={b} c={c} L={n} k=4", functools.partial(make, batch=b, channels=c, length=n))
            for b, c, n in shapes]


def selective_scan_flops(inputs: dict, out: torch.Tensor, mode: str) -> float:
    """9 per (batch, channel, state number, token): decay (2), update (3), readout (2), ``delta u`` and skip."""
    (batch, channels, length), state = inputs["u"].shape, inputs["A"].shape[1]
    return 9.0 * batch * channels * state * length * (3 if mode == "fwd+bwd" else 1)


def selective_scan_cases(size: str) -> list[Case]:
    shapes = {"full": [(8, 2048, 2048, 16), (2, 4096, 8192, 16)], "quick": [(2, 1024, 1024, 16)],
              "cpu": [(2, 128, 512, 16)], "tiny": [(1, 16, 64, 8)]}[size]

    def make(device, dtype, batch, channels, length, state):
        return {"u": _randn(batch, channels, length, device=device, dtype=dtype),
                "delta": (0.1 * torch.rand(batch, channels, length, device=device)).to(dtype),
                "A": -torch.arange(1, state + 1, device=device, dtype=torch.float32).repeat(channels, 1),
                "B": _randn(batch, state, length, device=device, dtype=dtype),
                "C": _randn(batch, state, length, device=device, dtype=dtype),
                "D": torch.ones(channels, device=device),
                "z": _randn(batch, channels, length, device=device, dtype=dtype)}

    return [Case(f"b={b} d={c} L={n} N={s}", functools.partial(make, batch=b, channels=c, length=n, state=s))
            for b, c, n, s in shapes]


def _output_only(scan: Callable) -> Callable:
    """The scan's ``y`` alone (the benchmark differentiates one output)."""
    return lambda **inputs: scan(**inputs)[0]
def ssd_scan_flops(inputs: dict, out: torch.Tensor, mode: str) -> float:
    """The recurrence's own work: 6 flops per state entry per position (decay, input, readout)."""
    batch, length, heads, head_dim = inputs["x"].shape
    flops = 6 * batch * length * heads * head_dim * inputs["B"].shape[-1]
    return flops if mode == "fwd" else 3 * flops


def ssd_cases(size: str) -> list[Case]:
    """Mamba-2 shapes: head dim 64, state 128 (64 on the CPU), one group; chunks of 64."""
    batch, length, heads, d_state = {"full": (2, 4096, 32, 128), "quick": (1, 2048, 16, 128),
                                     "cpu": (1, 512, 4, 64), "tiny": (1, 128, 2, 16)}[size]

    def make(device, dtype):
        gen = torch.Generator(device=device).manual_seed(0)
        dt = torch.nn.functional.softplus(torch.randn(batch, length, heads, device=device, generator=gen) - 3)
        return {"x": _randn(batch, length, heads, 64, device=device, dtype=dtype),
                "dt": dt.to(dtype), "A": -torch.linspace(1, 16, heads, device=device),
                "B": _randn(batch, length, 1, d_state, device=device, dtype=dtype, scale=d_state ** -0.5),
                "C": _randn(batch, length, 1, d_state, device=device, dtype=dtype, scale=d_state ** -0.5)}

    return [Case(f"b={batch} L={length} h={heads} p=64 N={d_state} g=1", make)]


def ssd_output(**inputs) -> torch.Tensor:
    return ssd(**inputs)[0]


def ssd_sequential(**inputs) -> torch.Tensor:
    """The direct recurrence in PyTorch, one step per position."""
    return ssd_recurrence(**inputs)[0].to(inputs["x"].dtype)


def ssd_as_attention(x, dt, A, B, C) -> torch.Tensor:
    """SSD's dual without the decays: causal softmax attention of queries C, keys B, values dt x, by the
    flash-attention kernel, the same shapes (head dim = d_state for q, k): where the two cross over."""
    heads = x.shape[2]
    q = C.expand(-1, -1, heads, -1).transpose(1, 2)
    k = B.expand(-1, -1, heads, -1).transpose(1, 2)
    v = (x * dt.unsqueeze(-1)).transpose(1, 2)
    head_dim, width = v.shape[-1], max(q.shape[-1], v.shape[-1])
    # the kernel wants one head dim: zero padding changes neither the scores nor the first head_dim outputs
    q, k, v = (torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
    return attention(q, k, v, causal=True)[..., :head_dim].transpose(1, 2)
def _linear_shape(size: str) -> tuple[int, int, int, int]:
    return {"full": (8, 16, 4096, 64), "quick": (4, 16, 2048, 64), "cpu": (1, 4, 1024, 32),
            "tiny": (1, 2, 64, 16)}[size]


def chunked_linear_attention_cases(size: str) -> list[Case]:
    batch, heads, length, head_dim = _linear_shape(size)

    def make(device, dtype, decay):
        q, k = (_randn(batch, heads, length, head_dim, device=device, dtype=dtype, scale=0.3) for _ in range(2))
        v = _randn(batch, heads, length, head_dim, device=device, dtype=dtype)
        shape = {"none": None, "head": (batch, heads, length), "channel": (batch, heads, length, head_dim)}[decay]
        g = None if shape is None else -torch.rand(shape, device=device).mul(0.1).to(dtype)
        return {"q": q, "k": k, "v": v, "log_decay": g}

    return [Case(f"b={batch} h={heads} L={length} d={head_dim} decay={decay}", functools.partial(make, decay=decay))
            for decay in ("none", "head", "channel")]


def delta_rule_cases(size: str) -> list[Case]:
    batch, heads, length, head_dim = _linear_shape(size)

    def make(device, dtype, gated):
        q = _randn(batch, heads, length, head_dim, device=device, dtype=dtype, scale=0.3)
        k = torch.nn.functional.normalize(_randn(batch, heads, length, head_dim, device=device, dtype=dtype), dim=-1)
        v = _randn(batch, heads, length, head_dim, device=device, dtype=dtype)
        beta = torch.rand(batch, heads, length, device=device).to(dtype)
        g = -torch.rand(batch, heads, length, device=device).mul(0.1).to(dtype) if gated else None
        return {"q": q, "k": k, "v": v, "beta": beta, "log_decay": g}

    return [Case(f"b={batch} h={heads} L={length} d={head_dim} {'gated' if gated else 'plain'}",
                 functools.partial(make, gated=gated)) for gated in (False, True)]


def linear_attention_flops(inputs: dict, out: torch.Tensor, mode: str) -> float:
    """The chunked form with chunks of 64: ``2 b h L (64 (d_k + d_v) + 2 d_k d_v)``; fwd+bwd 3 x fwd."""
    batch, heads, length, d_k = inputs["q"].shape
    d_v = inputs["v"].shape[-1]
    flops = 2 * batch * heads * length * (min(64, length) * (d_k + d_v) + 2 * d_k * d_v)
    return flops if mode == "fwd" else 3 * flops


def _output_only(fn: Callable) -> Callable:
    """The op's output alone (the benchmark differentiates one tensor; the final state is not timed apart)."""
    return lambda **inputs: fn(**inputs)[0]


def _dispatch(vandermonde: Callable, cauchy: Callable) -> Callable:
    """One entry for the two SSM ops: the inputs say which one (``coef`` is Vandermonde's)."""
    return lambda **inputs: (vandermonde if "coef" in inputs else cauchy)(**inputs)


OPS: dict[str, Op] = {
    "attention": Op(
        attention, offtheshelf_attention, "SDPA, flash backend (sdpa_kernel(SDPBackend.FLASH_ATTENTION))",
        ("q", "k", "v"), "flops", "fwd 4 b h Lq Lkv d (x 1/2 causal); fwd+bwd 3.5 x fwd (FlashAttention-2 convention)",
        attention_flops, attention_cases,
        {"fwd": [("speedup", ">=", 1.0), ("throughput", ">=", 400.0)], "fwd+bwd": [("speedup", ">=", 0.9)]}),
    "fft_conv": Op(
        fft_conv, offtheshelf_fft_conv, "torch.fft rfft/irfft convolution (cuFFT)", ("u", "k"), "bytes",
        "fwd bytes(u, k) + bytes(y); fwd+bwd 2 (inputs + output) + input gradients", None, fft_conv_cases,
        {mode: [("speedup", ">=", 3.0), ("memory_ratio", "<=", 0.5)] for mode in MODES}),
    "monarch_matmul": Op(
        monarch_matmul, offtheshelf_monarch_matmul, "torch.bmm with explicit permutes", ("x", "blkdiag1", "blkdiag2"),
        "flops", "fwd 2 tokens (numel(blkdiag1) + numel(blkdiag2)); fwd+bwd 3 x fwd", monarch_flops, monarch_cases,
        {mode: [("speedup", ">=", 1.2)] for mode in MODES}),
    "ssm_kernel": Op(
        _dispatch(vandermonde_kernel, cauchy_kernel),
        _dispatch(offtheshelf_vandermonde_kernel, offtheshelf_cauchy_kernel),
        "materialising einsum / broadcast over (channels, state, length)", ("coef", "log_z", "numerators", "b", "lam"),
        "flops", "8 real flops per complex multiply-add: Vandermonde 8 c N L, Cauchy 8 c sums N L "
        "(reciprocals not counted); fwd+bwd 3 x fwd. Memory linear in length: peak <= 4 x the bytes of inputs, "
        "output (and gradients), i.e. O(c (N + L)), while the materialised tensor is N times the output",
        ssm_flops, ssm_cases,
        {mode: [("speedup", ">=", 5.0), ("memory_per_io", "<=", 4.0)] for mode in MODES}, torch.complex64),
    "short_conv": Op(
        short_conv, offtheshelf_short_conv, "nn.Conv1d(groups=channels) (cuDNN depthwise conv1d)",
        ("x", "weight", "bias"), "bytes", "fwd bytes(x, weight, bias) + bytes(y); fwd+bwd 2 (inputs + output) + "
        "input gradients", None, short_conv_cases, {mode: [("speedup", ">=", 3.0)] for mode in MODES}),
    "selective_scan": Op(
        _output_only(selective_scan), _output_only(offtheshelf_selective_scan),
        "the recurrence as a PyTorch loop over time", ("u", "delta", "B", "C", "z"), "flops",
        "9 b d N L (decay 2, update 3, readout 2, delta u, skip); fwd+bwd 3 x fwd", selective_scan_flops,
        selective_scan_cases, {mode: [("speedup", ">=", 20.0)] for mode in MODES}),
    "ssd": Op(
        ssd_output, ssd_sequential, "the direct recurrence in PyTorch, a step per position", ("x", "dt", "B", "C"),
        "flops", "6 b L heads head_dim d_state (the recurrence's decay, input and readout); fwd+bwd 3 x fwd",
        ssd_scan_flops, ssd_cases, {mode: [("speedup", ">=", 20.0)] for mode in MODES}),
    "ssd_vs_attention": Op(
        ssd_output, ssd_as_attention, "flash attention (seqarch.kernels.attention), q=C, k=B, v=dt x, causal",
        ("x", "dt", "B", "C"), "flops", "as ssd (the crossover: speed-up > 1 where SSD beats attention)",
        ssd_scan_flops, ssd_cases, {mode: [] for mode in MODES}),
    # No target was set for these two: the rows report the speed-up over the chunked PyTorch twin.
    "chunked_linear_attention": Op(
        _output_only(chunked_linear_attention), _output_only(chunked_linear_attention_reference),
        "the chunked PyTorch twin (chunked_linear_attention_reference, one loop step per 64 tokens)",
        ("q", "k", "v"), "flops", linear_attention_flops.__doc__.split(": ")[1], linear_attention_flops,
        chunked_linear_attention_cases, {mode: [] for mode in MODES}),
    "delta_rule": Op(
        _output_only(delta_rule), _output_only(delta_rule_reference),
        "the chunked WY PyTorch twin (delta_rule_reference, one loop step per 64 tokens)",
        ("q", "k", "v", "beta"), "flops", "as chunked_linear_attention (the triangular solves not counted)",
        linear_attention_flops, delta_rule_cases, {mode: [] for mode in MODES}),
}
FIELD_NAMES = {"speedup": "speed-up", "throughput": "TFLOP/s", "memory_ratio": "memory ratio",
               "memory_per_io": "peak memory / io bytes"}


# -- measuring -------------------------------------------------------------------------------
def peak_key(metric: str, dtype: torch.dtype) -> str:
    if metric == "bytes":
        return "hbm"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    return 1e3 * benchlib.median_time(fn, device, repeats=repeats)


def call(fn: Callable, inputs: dict, mode: str, grad_args: list[str], grad_out: torch.Tensor | None) -> Callable:
    """A closure running one forward (no autograd graph) or one forward+backward of ``fn``."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(**inputs)
        return run
    leaves = [inputs[name] for name in grad_args]
    # autograd.grad returns the gradients instead of accumulating them into .grad: no zeroing between runs.
    return lambda: torch.autograd.grad(fn(**inputs), leaves, grad_out)


def measure_side(fn: Callable, inputs: dict, mode: str, grad_args: list[str], grad_out, device, repeats) -> dict:
    try:
        run = call(fn, inputs, mode, grad_args, grad_out)
        # The memory run comes first: it also compiles and warms up the Triton kernels.
        peak = benchlib.peak_memory(run, device) if device.type == "cuda" else None
        return {"ms": time_ms(run, device, repeats), "peak_bytes": peak}
    except Exception as error:  # noqa: BLE001 (one failing side must not stop the sweep)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}


def output_probe(op: Op, inputs: dict) -> torch.Tensor:
    """One forward (off-the-shelf first, ours if it fails) for the output's shape and dtype."""
    with torch.no_grad():
        try:
            return op.theirs(**inputs)
        except Exception:  # noqa: BLE001 (its own error is recorded when it is timed)
            return op.ours(**inputs)


def check_targets(op: Op, row: dict, on_gpu: bool) -> tuple[bool | None, str]:
    """``(met, text)`` for the speed targets of this op and mode; None when not checkable."""
    if not on_gpu:
        return None, "n/a (CPU: twins, no Triton)"
    if not op.targets[row["mode"]]:
        return None, "no target (a comparison)"
    failures = []
    for field, relation, threshold in op.targets[row["mode"]]:
        value = row.get(field)
        if value is None:
            return None, f"not measured ({FIELD_NAMES[field]})"
        if not (value >= threshold if relation == ">=" else value <= threshold):
            failures.append(f"{FIELD_NAMES[field]} {value:.3g} {'<' if relation == '>=' else '>'} {threshold:g}")
    return (False, "not met: " + "; ".join(failures)) if failures else (True, "met")


def target_text(op: Op, mode: str) -> str:
    return ", ".join(f"{FIELD_NAMES[f]} {r} {t:g}" for f, r, t in op.targets[mode]) or "none"


def summarise(row: dict, op: Op, work: float, io: float, peaks: dict | None, dtype: torch.dtype, *,
              on_gpu: bool) -> dict:
    """A copy of a row with measured ``{ours,theirs}_ms`` and ``_peak_bytes``, plus the derived numbers and the
    target check."""
    row = dict(row)
    scale = 1e12 if op.metric == "flops" else 1e9
    row["unit"], row["work"] = ("TFLOP/s" if op.metric == "flops" else "GB/s"), work
    for side in ("ours", "theirs"):
        if f"{side}_ms" in row:
            row[f"{side}_throughput"] = work / (row[f"{side}_ms"] * 1e-3) / scale
    if "ours_ms" in row and "theirs_ms" in row:
        row["speedup"] = row["theirs_ms"] / row["ours_ms"]
    if peaks and "ours_throughput" in row:
        row["peak_share"] = row["ours_throughput"] * scale / peaks[peak_key(op.metric, dtype)]
    if row.get("ours_peak_bytes") is not None and row.get("theirs_peak_bytes"):
        row["memory_ratio"] = row["ours_peak_bytes"] / row["theirs_peak_bytes"]
    if row.get("ours_peak_bytes") is not None:
        row["memory_per_io"] = row["ours_peak_bytes"] / io
    row["throughput"] = row.get("ours_throughput")
    row["target_met"], row["target"] = check_targets(op, row, on_gpu)
    return row


def bench_case(name: str, op: Op, case: Case, device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    """Both modes of one case: a row each, with the error recorded when something fails."""
    dtype = op.fixed_dtype or dtype
    base = {"op": name, "case": case.label, "dtype": str(dtype).replace("torch.", ""), "note": case.note}
    try:
        torch.manual_seed(0)
        inputs = case.make(device, dtype)
        grad_args = [n for n in op.grad_args if isinstance(inputs.get(n), torch.Tensor)]
        for n in grad_args:
            inputs[n].requires_grad_(True)
        probe = output_probe(op, inputs)
        grad_out = torch.randn_like(probe)
        base["backend"] = backend(next(t for t in inputs.values() if isinstance(t, torch.Tensor)))
    except Exception as error:  # noqa: BLE001 (recorded in the rows; the sweep goes on)
        return [{**base, "mode": mode, "error": f"setup: {type(error).__name__}: {error}"} for mode in MODES]
    peaks = device_peaks(benchlib.device_name(device)) if device.type == "cuda" else None
    rows = []
    for mode in MODES:
        row = {**base, "mode": mode}
        io = io_bytes(inputs, probe, mode, tuple(grad_args))
        work = op.work(inputs, probe, mode) if op.work else io
        for side, fn in (("ours", op.ours), ("theirs", op.theirs)):
            result = measure_side(fn, inputs, mode, grad_args, grad_out, device, repeats)
            if "error" in result:
                row[f"{side}_error"] = result["error"]
                continue
            row[f"{side}_ms"], row[f"{side}_peak_bytes"] = result["ms"], result["peak_bytes"]
        rows.append(summarise(row, op, work, io, peaks, dtype, on_gpu=device.type == "cuda"))
    del inputs, probe, grad_out
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# -- report ----------------------------------------------------------------------------------
def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def markdown(rows: list[dict], names: list[str], device: torch.device, dtype: str, size: str, repeats: int) -> str:
    name = benchlib.device_name(device)
    if device.type == "cuda":
        timing = ("`triton.testing.do_bench` median (warm-up 25 ms, 100 ms of runs); memory is "
                  "torch.cuda.max_memory_allocated beyond the inputs")
        peaks = device_peaks(name)
        peak_line = (f"Peaks for this device: {peaks}." if peaks else
                     "This device is not in seqarch.devices.DEVICE_PEAKS: the share of peak is '-'.")
    else:
        timing, peak_line = f"benchlib.median_time, median of {repeats} warm runs", f"**{CPU_NOTE}**"
    header = ["op", "case", "mode", "backend", "ours ms", "off-the-shelf ms", "speed-up", "ours TFLOP/s or GB/s",
              "% of peak", "ours MiB", "off-the-shelf MiB", "memory ratio", "target check", "error"]
    table = []
    for r in rows:
        errors = "; ".join(f"{k.split('_')[0] if k != 'error' else 'case'}: {r[k]}" for k in
                           ("error", "ours_error", "theirs_error") if k in r)
        table.append([r["op"], r["case"] + (f" ({r['note']})" if r.get("note") else ""), r["mode"],
                      r.get("backend", "-"), _fmt(r.get("ours_ms"), "{:.3f}"), _fmt(r.get("theirs_ms"), "{:.3f}"),
                      _fmt(r.get("speedup"), "{:.2f}x"),
                      _fmt(r.get("ours_throughput"), "{:.3g} " + r.get("unit", "")),
                      _fmt(r.get("peak_share"), "{:.0%}"), _mib(r.get("ours_peak_bytes")),
                      _mib(r.get("theirs_peak_bytes")), _fmt(r.get("memory_ratio"), "{:.2f}x"),
                      r.get("target", "-"), errors or "-"])
    lines = [f"# Kernel microbenchmarks: seqarch.kernels vs off-the-shelf ({dtype}, {size} shapes)", "",
             (f"Device: {name}. Command: `{benchlib.command_line()}`. Timing: {timing}. "
              "Speed-up = off-the-shelf time / our time; memory ratio = ours / off-the-shelf."), "", peak_line, "",
             benchlib.markdown_table(header, table), "## Ops: baseline, work formula, targets (H100, bf16)", ""]
    for op_name in names:
        op = OPS[op_name]
        lines.append(f"- `{op_name}`: off-the-shelf {op.baseline}; {'TFLOP/s' if op.metric == 'flops' else 'GB/s'} "
                     f"from {op.formula}; targets: fwd {target_text(op, 'fwd')}; fwd+bwd {target_text(op, 'fwd+bwd')}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=None, help=f"ops to run (default: all of {', '.join(OPS)})")
    parser.add_argument("--quick", action="store_true", help="smaller shapes (tiny ones on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU by default")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats on the CPU (median)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; "
                             "1 gives steadier times on a busy machine)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: cases that would start after this are skipped (marked in the report)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: scripts/results/cpu or scripts/results/cuda)")
    args = parser.parse_args()
    names = args.ops or list(OPS)
    for name in names:
        if name not in OPS:
            parser.error(f"--ops: unknown op {name!r}; expected some of {list(OPS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device: expected cpu on this machine (no CUDA), got cuda")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if not isinstance(getattr(torch, args.dtype, None), torch.dtype):
        parser.error(f"--dtype: expected a torch dtype name such as bfloat16, got {args.dtype!r}")
    dtype = getattr(torch, args.dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    size = ("quick" if args.quick else "full") if device.type == "cuda" else ("tiny" if args.quick else "cpu")
    out = args.out or benchlib.default_out(args.device)
    if device.type != "cuda":
        sys.stderr.write(CPU_NOTE + "\n")

    rows: list[dict] = []
    start = time.perf_counter()
    for name in names:
        for case in OPS[name].cases(size):
            if args.budget is not None and time.perf_counter() - start > args.budget:
                rows += [{"op": name, "case": case.label, "mode": mode, "error": f"skipped: --budget {args.budget:g} s"}
                         for mode in MODES]
            else:
                rows += bench_case(name, OPS[name], case, device, dtype, args.repeats)
            sys.stderr.writelines(progress_line(row) for row in rows[-len(MODES):])
            # Rewritten after every case: a run cut short (timeout) keeps the rows it finished.
            text = markdown(rows, names, device, args.dtype, size, args.repeats)
            json_path, md_path = benchlib.write_report(out, "bench_kernels", payload(rows, names, device, args, size),
                                                       text)
    sys.stdout.write(text + f"\nwrote {json_path} and {md_path}\n")


def progress_line(row: dict) -> str:
    error = row.get("error") or row.get("ours_error") or row.get("theirs_error") or ""
    return (f"{row['op']:>15} {row['case']:<48} {row['mode']:<7} ours {_fmt(row.get('ours_ms'), '{:.3f}')} ms, "
            f"theirs {_fmt(row.get('theirs_ms'), '{:.3f}')} ms, {row.get('target', '')} {error}\n")


def payload(rows: list[dict], names: list[str], device: torch.device, args: argparse.Namespace, size: str) -> dict:
    ops = {name: {"baseline": OPS[name].baseline, "unit": "TFLOP/s" if OPS[name].metric == "flops" else "GB/s",
                  "formula": OPS[name].formula, "targets": OPS[name].targets} for name in names}
    return {"device": benchlib.device_name(device), "dtype": args.dtype, "size": size,
            "triton_timed": device.type == "cuda", "note": None if device.type == "cuda" else CPU_NOTE,
            "command": benchlib.command_line(), "environment": benchlib.environment(), "ops": ops, "results": rows}

if __name__ == "__main__":
    main()
