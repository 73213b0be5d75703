"""Which implementation a kernel call takes: the Triton kernel or its PyTorch twin.

This module alone decides.  The device-level rule: Triton on CUDA tensors when Triton
imports, the PyTorch twin otherwise.  ``SEQARCH_KERNELS=auto|triton|torch`` forces a
choice for the whole process; :func:`use_backend` forces one inside a ``with`` block
(tests swap backends inside one model this way).

On top of it, each op module declares the calls its Triton kernels take as one function
``triton_limits(<the op's arguments>) -> str | None``: the reason the Triton path cannot
take this call (a message naming the argument, the expected value and what came), or
None.  The public op asks :func:`select` once; :func:`backend` answers the same question
from outside, for a tensor (the device-level answer) or for an actual call
(``backend("attention", q, k, v, causal=True)``).  The answer is the path the call
takes:

- ``torch`` forced: the twin;
- ``auto``: Triton where the device allows it and the op's limits do, the twin otherwise;
- ``triton`` forced: Triton, or a ``ValueError`` saying why it cannot take the call
  (Triton not importable, CPU tensors outside the interpreter, or the op's reason).
  Nothing falls back silently.

A call whose result is empty (a zero batch, no channels...) returns it before dispatch on
every backend: there is nothing to compute (``tensor_checks.empty_result``).

Forcing ``triton`` on CPU tensors is allowed only under ``TRITON_INTERPRET=1``
(Triton's interpreter, which runs kernels on the CPU, slowly): that is how the
test suite checks every Triton kernel without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterator

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "SEQARCH_KERNELS"
# Each op's limits: (module of seqarch.kernels, name of its ``triton_limits`` function).  Looked up
# on first use, since the op modules import this one.
OPS = {
    "attention": ("attention", "triton_limits"),
    "chunked_linear_attention": ("chunked_linear_attention", "triton_limits"),
    "delta_rule": ("delta_rule", "triton_limits"),
    "fft_conv": ("fft_conv", "triton_limits"),
    "monarch_matmul": ("monarch_matmul", "triton_limits"),
    "short_conv": ("short_conv", "triton_limits"),
    "selective_scan": ("selective_scan", "triton_limits"),
    "ssd": ("ssd", "triton_limits"),
    "vandermonde_kernel": ("ssm_kernel", "vandermonde_triton_limits"),
    "cauchy_kernel": ("ssm_kernel", "cauchy_triton_limits"),
}

_override = threading.local()


@functools.cache
def triton_available() -> bool:
    """True when ``import triton`` works in this environment."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install raises more than ImportError
        return False
    return True


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def requested_backend() -> str:
    """The forced choice: :func:`use_backend` first, then ``SEQARCH_KERNELS``, else ``auto``."""
    forced = getattr(_override, "choice", None)
    if forced is not None:
        return forced
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{ENV_VAR}: expected one of {', '.join(BACKENDS)}, got {choice!r}")
    return choice


def _device_of(where: torch.Tensor | torch.device | str | None) -> torch.device:
    if where is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(where, torch.Tensor):
        return where.device
    return torch.device(where)


def _device_backend(device: torch.device) -> str:
    """The device-level rule (no op limits); raises when ``triton`` is forced where it cannot run."""
    choice = requested_backend()
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise ValueError(f"{ENV_VAR}: 'triton' was forced but triton does not import here; use 'auto' or 'torch'")
    if device.type != "cuda" and not interpreting():
        raise ValueError(
            f"{ENV_VAR}: 'triton' was forced for a tensor on {device}; expected CUDA tensors "
            "(or TRITON_INTERPRET=1 to run Triton's CPU interpreter)"
        )
    return "triton"


def select(op: str, where: torch.Tensor | torch.device | str | None, reason: str | None) -> str:
    """The path of one call of ``op`` on ``where``'s device: ``"triton"`` or ``"torch"``.

    ``reason`` is the op's ``triton_limits`` answer for the call (None: the Triton path takes
    it).  Raises ``ValueError`` under forced ``triton`` when the device or ``reason`` rules
    Triton out; under ``auto`` those calls take the twin.
    """
    if _device_backend(_device_of(where)) == "torch":
        return "torch"
    if reason is None:
        return "triton"
    if requested_backend() == "triton":
        raise ValueError(f"{reason} ({op}: 'triton' was forced; the Triton path cannot take this call, "
                         "'auto' would run the PyTorch twin)")
    return "torch"


def triton_limits_of(op: str) -> Callable[..., str | None]:
    """The ``triton_limits`` function of ``op`` (one of :data:`OPS`)."""
    if op not in OPS:
        raise ValueError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
    module, name = OPS[op]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def backend(where: torch.Tensor | torch.device | str | None = None, *args, **kwargs) -> str:
    """The backend a kernel call takes: ``"triton"`` or ``"torch"``.

    ``backend(tensor_or_device)``: the device-level answer, for any op within its Triton
    limits (with no argument, for the default device: CUDA when present).
    ``backend(op, *args, **kwargs)`` with ``op`` a name of :data:`OPS` and the arguments of
    a call the op accepts (``backend("short_conv", x, weight)``): the answer for that call,
    the op's Triton limits included.  Raises ``ValueError`` when ``triton`` is forced where
    it cannot run: Triton not importable, CPU tensors outside the interpreter, or (for a
    call) the reason the op's Triton path cannot take it.
    """
    if isinstance(where, str) and where in OPS:
        reason = triton_limits_of(where)(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        return select(where, tensors[0] if tensors else None, reason)
    if args or kwargs:
        raise ValueError(f"where: expected an op name ({', '.join(OPS)}) when call arguments follow, got {where!r}")
    return _device_backend(_device_of(where))


@contextlib.contextmanager
def use_backend(choice: str) -> Iterator[None]:
    """Force ``choice`` (``auto``, ``triton`` or ``torch``) for kernel calls in this thread."""
    if choice not in BACKENDS:
        raise ValueError(f"choice: expected one of {', '.join(BACKENDS)}, got {choice!r}")
    previous = getattr(_override, "choice", None)
    _override.choice = choice
    try:
        yield
    finally:
        _override.choice = previous


def device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s CUDA device the current one around a Triton launch (Triton launches on the
    current device; without this, tensors on ``cuda:1`` would be read by a kernel on ``cuda:0``)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
