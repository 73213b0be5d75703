"""Peak memory of a block of work: CUDA allocator peak, or the process's peak resident
set on Linux CPUs (reset at the start through ``/proc/self/clear_refs``).

The one peak-memory helper of seqarch: training reports it per run, and benchmarks can
use the same measure (``with PeakMemory(device) as m: fn()``). Imports nothing of seqarch.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # typing.Self exists from Python 3.11; annotations are not evaluated at run time
    from typing import Self


def _read_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_bytes`` (``None`` where unmeasurable).

    On CPUs this is the whole process's peak RSS during the block (model, data,
    activations and the Python runtime), when the kernel lets us reset it; else the
    process's lifetime peak (``getrusage``), which can only over-state.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak_bytes: int | None = None

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_hwm()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        peak = _read_hwm()
        if peak is None:
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        self.peak_bytes = peak
