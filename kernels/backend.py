"""Which implementation a kernel call takes: the Triton kernel or its PyTorch twin.

Rule: Triton on CUDA tensors when Triton imports, the
PyTorch twin otherwise. ``SEQARCH_KERNELS=auto|triton|torch`` forces a choice
for the whole process; :func:`use_backend` forces one inside a ``with`` block
(tests swap backends inside one model this way).

Forcing ``triton`` on CPU tensors is allowed only under ``TRITON_INTERPRET=1``
(Triton's interpreter, which runs kernels on the CPU, slowly): that is how the
test suite checks every Triton kernel without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "SEQARCH_KERNELS"

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


def backend(where: torch.Tensor | torch.device | str | None = None) -> str:
    """The backend a kernel call on ``where`` (a tensor or device) takes: ``"triton"`` or ``"torch"``.

    With no argument, the answer is for the default device (CUDA when present).
    Raises ``ValueError`` when ``triton`` is forced where it cannot run: Triton
    not importable, or CPU tensors outside the interpreter.
    """
    choice = requested_backend()
    device = _device_of(where)
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
