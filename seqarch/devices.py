"""What the hardware can do: one table of device peaks, shared by the training MFU and the kernel benchmark.

Peaks are keyed by a fragment of ``torch.cuda.get_device_name`` and matched in table
order, most specific first, so ``"NVIDIA H100 PCIe"`` finds the PCIe card and not the
SXM one. Values are vendor data-sheet numbers without sparsity:

- ``bf16`` / ``fp16``: dense tensor-core FLOP/s;
- ``fp32``: non-tensor-core FLOP/s (IEEE fp32 dot products);
- ``hbm``: memory bandwidth in bytes/s.

This module imports nothing of seqarch, like :mod:`seqarch.checks`.
"""

from __future__ import annotations

DEVICE_PEAKS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12, "hbm": 2.0e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12, "hbm": 3.9e12},
    "H100 80GB HBM3": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "hbm": 3.35e12},  # the SXM5 card's name
    "H100 SXM": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "hbm": 3.35e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "hbm": 3.35e12},  # other H100 names: the SXM card
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "hbm": 4.8e12},
    "A100-SXM4-80GB": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "hbm": 2.039e12},
    "A100-SXM4-40GB": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "hbm": 1.555e12},
    "A100 80GB PCIe": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "hbm": 1.935e12},
    "A100-PCIE-40GB": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "hbm": 1.555e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12, "hbm": 1.555e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12, "hbm": 0.864e12},
    "A10G": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12, "hbm": 0.6e12},
    "4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12, "hbm": 1.008e12},
}


def device_peaks(name: str) -> dict[str, float] | None:
    """The peaks of the device called ``name`` (first matching fragment), or ``None`` for an unknown device."""
    return next((peaks for key, peaks in DEVICE_PEAKS.items() if key in name), None)


def peak_flops(name: str, kind: str = "bf16") -> float | None:
    """Peak FLOP/s of kind ``kind`` (``bf16``, ``fp16``, ``fp32``) of the device ``name``, or ``None``."""
    peaks = device_peaks(name)
    return None if peaks is None else peaks[kind]
