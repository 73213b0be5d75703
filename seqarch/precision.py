"""The dtypes numerically sensitive work runs in (ground floor: imports nothing of seqarch).

FFTs, SSM kernels and implicit filters run in at least float32 whatever the
parameter dtype, so bfloat16 and float16 models keep accurate long convolutions;
float64 inputs stay float64 (the tests compare against float64 references).
"""

from __future__ import annotations

import torch

# The floating dtypes looked up, not promoted: ``torch.promote_types`` is a dispatched op, and a
# decoding step asks this several times per layer on every token.
_COMPUTE = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32,
            torch.float64: torch.float64}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype sensitive parts run in for inputs of ``dtype``: at least float32
    (``torch.promote_types(dtype, torch.float32)``)."""
    found = _COMPUTE.get(dtype)
    return found if found is not None else torch.promote_types(dtype, torch.float32)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype whose parts are ``compute_dtype(dtype)``: complex64 or complex128."""
    return torch.complex128 if compute_dtype(dtype) == torch.float64 else torch.complex64
