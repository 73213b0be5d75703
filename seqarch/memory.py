"""Peak memory of a block of work: CUDA allocator peak, or the process's peak resident
set on Linux CPUs (reset at the start through ``/proc/self/clear_refs``).

The one peak-memory helper of seqarch: training reports it per run, and benchmarks can
use the same measure (``with PeakMemory(device) as m: fn()``). Imports nothing of seqarch.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # typing.Self exists from Python 3.11; annotations are not evaluated at run time
    from typing import Self


def _read_status(field: str) -> int | None:
    """Bytes of a ``/proc/self/status`` field (``VmHWM``: peak resident set, ``VmRSS``: current)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
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


def _release_freed_memory() -> None:
    """Give memory the process has freed back to the system (glibc's ``malloc_trim``; a no-op elsewhere),
    so the resident set at the start holds only what is in use: memory an earlier block freed but kept
    would otherwise be reused unseen and the block's growth under-stated."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _lifetime_peak_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_bytes`` and ``m.growth_bytes``
    (``None`` where unmeasurable).

    ``peak_bytes``: on GPUs the CUDA allocator's peak during the block; on CPUs the whole
    process's peak RSS during the block (model, data, activations and the Python runtime),
    when the kernel lets us reset it, else the process's lifetime peak (``getrusage``),
    which can only over-state. ``growth_bytes``: that peak less what was held when the
    block began (allocated CUDA memory, or the resident set): the memory the block's work
    itself needed, comparable between models on a CPU where the runtime dominates the RSS.
    Without a resettable peak, the baseline is the lifetime peak so far, so call it early
    in a fresh process.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.growth_bytes: int | None = None
        self._baseline: int | None = None

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            _release_freed_memory()
            # After a reset the peak starts at the current resident set; without one, at the lifetime peak.
            self._baseline = _read_status("VmRSS") if _reset_hwm() else _lifetime_peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _read_status("VmHWM")
            peak = _lifetime_peak_rss() if peak is None else peak
        self.peak_bytes = peak
        self.growth_bytes = None if self._baseline is None else max(0, peak - self._baseline)
