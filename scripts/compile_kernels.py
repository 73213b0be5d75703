"""Compile every Triton kernel of ``seqarch.kernels`` ahead of time for a GPU architecture, without a GPU.

    python scripts/compile_kernels.py               # sm_90 (H100 / H200)
    python scripts/compile_kernels.py --arch 80     # sm_80 (A100)
    python scripts/compile_kernels.py --quick       # one case per code path (tests/test_kernel_compile.py)

Triton's CPU interpreter (what the tests use without a GPU) accepts code that the GPU
compiler rejects: a ``tl.dot`` smaller than 16, a layout the backend cannot lower, a
wrong pointer type. This script catches those without a GPU. It runs every kernel's
autograd function forward and backward on *fake* CUDA tensors (``FakeTensorMode``:
shapes, dtypes and strides, no memory and no device), so the launchers pick their
real GPU tiles. It records each Triton launch instead of running it. Then it compiles
each recorded launch (kernel, argument types, constexprs, ``num_warps``,
``num_stages``) with ``triton.compile`` for ``cuda:<arch>``, through ptxas. It prints
one line per launch with the registers per thread and spill bytes (``ptxas -v``) and
the shared memory per block, and exits 1 if a compile fails or a launch needs more
shared memory than the architecture has.

Needs triton and must run without ``TRITON_INTERPRET`` (it unsets it for itself).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile, do not interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # what Triton 3.9 does on a GPU, without its warning

import torch
import triton
from torch._subclasses.fake_tensor import FakeTensorMode
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from seqarch.kernels import attention as attention_mod
from seqarch.kernels import chunked_linear_attention as chunked_linear_attention_mod
from seqarch.kernels import delta_rule as delta_rule_mod
from seqarch.kernels import fft_conv as fft_conv_mod
from seqarch.kernels import monarch_matmul as monarch_mod
from seqarch.kernels import selective_scan as selective_scan_mod
from seqarch.kernels import short_conv as short_conv_mod
from seqarch.kernels import ssd as ssd_mod
from seqarch.kernels import ssm_kernel as ssm_mod

KERNEL_MODULES = (attention_mod, chunked_linear_attention_mod, delta_rule_mod, fft_conv_mod, monarch_mod,
                  short_conv_mod, ssm_mod, selective_scan_mod, ssd_mod)
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.float64: "*fp64",
                 torch.int32: "*i32", torch.int64: "*i64"}
LAUNCH_OPTIONS = ("num_warps", "num_stages")


class Launch(types.SimpleNamespace):
    """One recorded launch: ``kernel`` (the JITFunction), ``args``, ``constexprs`` and ``options``."""


def _argument_type(name: str, value) -> str:
    if isinstance(value, torch.Tensor):
        if value.dtype not in POINTER_TYPES:
            raise TypeError(f"{name}: no Triton pointer type for {value.dtype}")
        return POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"{name}: cannot type a launch argument of type {type(value).__name__}")


@contextlib.contextmanager
def recording(launches: list[Launch]):
    """Replace every ``*_kernel`` JITFunction of the kernel modules by a recorder for the duration."""

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                options = {key: kwargs.pop(key) for key in LAUNCH_OPTIONS if key in kwargs}
                launches.append(Launch(kernel=self.kernel, args=args, constexprs=kwargs, options=options))
            return launch

    saved = []
    for module in KERNEL_MODULES:
        for name, value in vars(module).items():
            if name.endswith("_kernel") and isinstance(value, triton.runtime.JITFunction):
                saved.append((module, name, value))
                setattr(module, name, Recorder(value))
    # No device exists: make the launchers' CUDA queries answer as an H100 would.
    real_properties, real_device = torch.cuda.get_device_properties, torch.cuda.device
    torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(multi_processor_count=132)
    torch.cuda.device = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        torch.cuda.get_device_properties, torch.cuda.device = real_properties, real_device


class _CudaFreeOps(torch.overrides.TorchFunctionMode):
    """Ops that a CPU-only torch cannot run even on fake CUDA tensors (they ask for a CUDA device
    guard): integer and index-tensor indexing, ``.real``/``.imag`` and ``torch.complex``, rewritten into equivalents."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__:
            tensor, key = args
            key = key if isinstance(key, tuple) else (key,)
            dim = len(key) - 1
            if all(k == slice(None) for k in key[:-1]):  # x[..., i] and x[:, index_tensor]
                if isinstance(key[-1], int):
                    return tensor.select(dim, key[-1])
                if isinstance(key[-1], torch.Tensor):
                    return tensor.index_select(dim, key[-1])
        part = getattr(getattr(func, "__self__", None), "__name__", None)  # a getter: the attribute's name
        if getattr(func, "__name__", None) == "__get__" and part in ("real", "imag"):
            # a fresh real tensor: its copies (``.contiguous()``) need no guard, and fake values do not matter
            return torch.empty(args[0].shape, device=args[0].device, dtype=args[0].dtype.to_real())
        if func is torch.complex:
            return torch.view_as_complex(torch.stack([args[0], args[1]], -1))
        return func(*args, **kwargs)


class _Context(types.SimpleNamespace):
    """Stands in for autograd's ``ctx``: autograd itself cannot run on fake CUDA tensors in a CPU-only torch."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def _run(function: type[torch.autograd.Function], *inputs) -> None:
    """``function.forward`` then ``function.backward`` with every tensor input wanting a gradient."""
    ctx = _Context(needs_input_grad=tuple(isinstance(x, torch.Tensor) for x in inputs))
    out = function.forward(ctx, *inputs)
    outputs = out if isinstance(out, tuple) else (out,)  # e.g. (output, final state)
    function.backward(ctx, *(torch.empty_like(o) for o in outputs))


def _run_selective_scan(dtype: torch.dtype, length: int, gate: bool, empty) -> None:
    """The selective scan's forward and backward (two outputs: ``y`` and the last state) at Mamba's shapes."""
    u, delta, z = (empty(2, 1536, length, dtype=dtype) for _ in range(3))
    B, C = (empty(2, 16, length, dtype=dtype) for _ in range(2))
    inputs = (u, delta, empty(1536, 16, dtype=torch.float32), B, C, empty(1536, dtype=torch.float32),
              z if gate else None, empty(2, 1536, 16, dtype=torch.float32))
    ctx = _Context(needs_input_grad=tuple(isinstance(x, torch.Tensor) for x in inputs))
    y, last = selective_scan_mod.SelectiveScanFunction.forward(ctx, *inputs)
    selective_scan_mod.SelectiveScanFunction.backward(ctx, torch.empty_like(y), torch.empty_like(last))
def _run_pair(function: type[torch.autograd.Function], *inputs) -> None:
    """As :func:`_run` for a function returning two tensors (an output and a final state)."""
    ctx = _Context(needs_input_grad=tuple(isinstance(x, torch.Tensor) for x in inputs))
    outs = function.forward(ctx, *inputs)
    function.backward(ctx, *(torch.empty_like(out) for out in outs))


def exercise_kernels(quick: bool = False) -> list[Launch]:
    """Run every kernel's autograd function forward and backward on fake CUDA tensors at GPU-sized
    shapes (the public functions' checks are the tests' business); returns the launches.
    ``quick``: half-precision cases only, one per code path, and a short SSM length."""
    launches: list[Launch] = []
    bf16, fp16, fp32, complex64 = torch.bfloat16, torch.float16, torch.float32, torch.complex64
    attention_cases = [(bf16, 64, 2, True)] + ([] if quick else [(bf16, 128, 8, False), (fp16, 32, 8, True),
                                                                 (fp32, 64, 8, False)])
    monarch_cases = [(4096, 4, bf16)] + ([] if quick else [(4096, 2, bf16), (1024, 32, bf16), (1024, 4, fp32)])
    fft_cases = [(1024, True, bf16), (8192, True, bf16)] + ([] if quick else [(2048, False, fp32)])
    short_conv_cases = [(4, bf16)] + ([] if quick else [(3, fp32)])
    ssm_length = 256 if quick else 4096
    # (dtype, head_dim, d_state, chunk_size, initial state): Mamba-2's 64 x 128 heads, and the other tiles
    ssd_cases = [(bf16, 64, 128, 64, True)] + ([] if quick else [(bf16, 64, 64, 64, False), (fp16, 128, 128, 32, True),
                                                                 (fp32, 64, 128, 32, True), (bf16, 32, 16, 128, False)])
    # (dtype, d_k, d_v, decay: None / "head" / "channel", initial state)
    linear_attention_cases = [(bf16, 64, 64, "channel", True)] + ([] if quick else [
        (bf16, 128, 256, None, False), (bf16, 64, 128, "head", True), (fp32, 32, 64, "channel", False)])
    # (dtype, d_k, d_v, gated, initial state)
    delta_rule_cases = [(bf16, 64, 128, True, True)] + ([] if quick else [(bf16, 128, 128, False, False),
                                                                       (fp32, 64, 64, True, False)])
    with recording(launches), FakeTensorMode(), _CudaFreeOps():
        def empty(*shape, dtype=bf16):
            return torch.empty(*shape, device="cuda", dtype=dtype)

        for dtype, head_dim, n_kv_heads, causal in attention_cases:
            q = empty(2, 8, 1024, head_dim, dtype=dtype)
            k, v = (empty(2, n_kv_heads, 1024, head_dim, dtype=dtype) for _ in range(2))
            _run(attention_mod.AttentionFunction, q, k, v, causal, head_dim**-0.5)
        for width, nblocks, dtype in monarch_cases:
            block = width // nblocks
            _run(monarch_mod.MonarchMatmulFunction, empty(512, width, dtype=dtype),
                 empty(nblocks, block, block, dtype=dtype), empty(nblocks, block, block, dtype=dtype))
        for length, causal, dtype in fft_cases:
            u, pre, post = (empty(2, 64, length, dtype=dtype) for _ in range(3))
            _run(fft_conv_mod.FFTConvFunction, u, empty(64, length, dtype=fp32), pre, post, causal, True)
        for kernel_size, dtype in short_conv_cases:
            _run(short_conv_mod.ShortConvFunction, empty(4, 256, 2048, dtype=dtype),
                 empty(256, kernel_size, dtype=dtype), empty(256, dtype=dtype))
        for dtype, gate in [(bf16, True)] + ([] if quick else [(fp16, True), (fp32, False)]):
            _run_selective_scan(dtype, 1000 if quick else 4096, gate, empty)
        for dtype, d_k, d_v, decay, has_state in linear_attention_cases:
            q, k = (empty(2, 4, 1024, d_k, dtype=dtype) for _ in range(2))
            g = {None: None, "head": empty(2, 4, 1024, dtype=dtype), "channel": empty(2, 4, 1024, d_k, dtype=dtype)}
            _run(chunked_linear_attention_mod.ChunkedLinearAttentionFunction, q, k, empty(2, 4, 1024, d_v, dtype=dtype),
                 g[decay], empty(2, 4, d_k, d_v, dtype=fp32) if has_state else None)
        for dtype, d_k, d_v, gated, has_state in delta_rule_cases:
            q, k = (empty(2, 4, 1024, d_k, dtype=dtype) for _ in range(2))
            _run(delta_rule_mod.DeltaRuleFunction, q, k, empty(2, 4, 1024, d_v, dtype=dtype),
                 empty(2, 4, 1024, dtype=dtype), empty(2, 4, 1024, dtype=dtype) if gated else None,
                 empty(2, 4, d_k, d_v, dtype=fp32) if has_state else None)
        _run(ssm_mod.VandermondeKernelFunction, empty(2, 256, 32, dtype=complex64), empty(256, 32, dtype=complex64),
             ssm_length)
        _run(ssm_mod.CauchyKernelFunction, empty(256, 4, 32, dtype=complex64), empty(ssm_length, dtype=complex64),
             empty(256, ssm_length, dtype=complex64), empty(256, 32, dtype=complex64))
        for dtype, head_dim, d_state, chunk_size, has_init in ssd_cases:
            batch, length, heads, groups = 2, 1000, 8, 2
            init = empty(batch, heads, head_dim, d_state, dtype=fp32) if has_init else None
            _run_pair(ssd_mod.SSDFunction, empty(batch, length, heads, head_dim, dtype=dtype),
                      empty(batch, length, heads, dtype=fp32), empty(heads, dtype=fp32),
                      empty(batch, length, groups, d_state, dtype=dtype),
                      empty(batch, length, groups, d_state, dtype=dtype), chunk_size, init)
    return launches


def compile_launch(launch: Launch, arch: int):
    """``triton.compile`` of one recorded launch for ``cuda:arch``; returns the compiled kernel."""
    kernel = launch.kernel
    names = kernel.arg_names
    positional = iter(launch.args)
    signature, constexprs = {}, {}
    for index, name in enumerate(names):
        if name in launch.constexprs:
            signature[name] = "constexpr"
            constexprs[(index,)] = launch.constexprs[name]
        else:
            signature[name] = _argument_type(name, next(positional))
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=launch.options)


def describe(launch: Launch) -> str:
    types_ = sorted({POINTER_TYPES[a.dtype] for a in launch.args if isinstance(a, torch.Tensor)})
    consts = ", ".join(f"{k}={v}" for k, v in launch.constexprs.items())
    opts = ", ".join(f"{k}={v}" for k, v in launch.options.items())
    return f"{launch.kernel.__name__} [{' '.join(types_)}] {consts}; {opts}"


# Shared memory one block may use (bytes): H100/H200, A100, and the consumer parts.
SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912, 86: 101376, 89: 101376}


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """Registers per thread and spill-store bytes that ptxas reports for ``ptx`` (``ptxas -v``)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        report = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}",
                                 str(source), "-o", str(Path(folder) / "kernel.cubin")],
                                check=True, capture_output=True, text=True)
    text = report.stdout + report.stderr
    registers = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores", text)
    return int(registers.group(1)) if registers else -1, int(spills.group(1)) if spills else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (default 90: H100/H200)")
    parser.add_argument("--quick", action="store_true",
                        help="half precision only, one case per code path (what the test suite runs, ~1 min)")
    args = parser.parse_args(argv)
    shared_limit = SHARED_MEMORY_LIMIT.get(args.arch, min(SHARED_MEMORY_LIMIT.values()))
    launches = exercise_kernels(args.quick)
    unique = {describe(launch): launch for launch in launches}
    failures = 0
    for text, launch in unique.items():
        start = time.perf_counter()
        try:
            compiled = compile_launch(launch, args.arch)
            registers, spills = ptxas_usage(compiled.asm["ptx"], args.arch)
        except Exception as error:  # noqa: BLE001 - report every kernel, then fail
            failures += 1
            sys.stdout.write(f"FAIL {text}\n     {type(error).__name__}: {str(error)[-2000:]}\n")
            continue
        shared = compiled.metadata.shared
        status = "ok  "
        if shared > shared_limit:  # it compiles, but the launch would fail on the card
            failures += 1
            status = "FAIL"
        mma = "mma" in compiled.asm["ptx"]
        sys.stdout.write(f"{status} {time.perf_counter() - start:5.1f}s  regs={registers:3d} spill={spills:5d}B "
                         f"smem={shared / 1024:5.1f}KiB  tensor cores={mma}  {text}\n")
    sys.stdout.write(f"{len(unique) - failures} of {len(unique)} kernel launches compiled for sm_{args.arch} "
                     f"within its {shared_limit // 1024} KiB of shared memory per block\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
