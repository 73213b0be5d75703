"""Checks and results shared by every op's public function: dtypes, devices, empty calls.

Each check raises a ``ValueError`` naming the argument, what was expected and what came
(``v: expected dtype torch.float32 (that of q), got torch.float64``), before any kernel
or twin runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    """``"float16, bfloat16 or float32"`` for a list of dtypes."""
    names = [str(dtype).removeprefix("torch.") for dtype in dtypes]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def shape_error(name: str, expected: str, tensor) -> ValueError:
    """The error for argument ``name`` whose shape (or type, for a non-tensor) is not ``expected``."""
    got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
    return ValueError(f"{name}: expected {expected}, got {got}")


def dot_precision(dtype: torch.dtype) -> str:
    """The ``input_precision`` of a kernel's ``tl.dot`` for inputs of ``dtype``: GPU float32 dots default to
    tf32, so float32 asks for exact ``"ieee"`` products (float32 results then match the twin)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_dtype(name: str, tensor: torch.Tensor, dtypes: Iterable[torch.dtype]) -> None:
    """Raise unless ``tensor.dtype`` is one of ``dtypes``."""
    dtypes = tuple(dtypes)
    if tensor.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype {dtype_names(dtypes)}, got {tensor.dtype}")


def check_like(reference_name: str, reference: torch.Tensor, tensors: dict[str, torch.Tensor | None], *,
               dtype: bool = True) -> None:
    """Raise unless every tensor of ``tensors`` (None entries skipped) is on ``reference``'s device
    and, when ``dtype``, of its dtype.  Devices first: a tensor on the wrong device is named as such."""
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.device != reference.device:
            raise ValueError(f"{name}: expected device {reference.device} (that of {reference_name}), "
                             f"got {tensor.device}")
        if dtype and tensor.dtype != reference.dtype:
            raise ValueError(f"{name}: expected dtype {reference.dtype} (that of {reference_name}), "
                             f"got {tensor.dtype}")


def empty_result(shape: tuple[int, ...], like: torch.Tensor, *inputs: torch.Tensor | None) -> torch.Tensor:
    """A tensor of ``shape`` (which has no elements) in ``like``'s dtype and device, in the autograd
    graph of ``inputs``: their gradients come out as zeros, as the op's would.

    An op whose result is empty returns this before dispatch, on either backend: there is
    nothing to compute, and kernels and twins alike would meet zero-size grids and FFTs.
    """
    out = like.new_zeros(shape)
    for tensor in inputs:
        if tensor is not None and tensor.requires_grad:
            link = tensor.sum() * 0  # a scalar: broadcast into no elements, it only links the graph
            if link.is_complex() and not out.is_complex():
                link = link.real
            out = out + link.to(out.dtype)
    return out
