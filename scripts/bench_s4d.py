"""S4D against its original minimal formulation, side by side in one run.

The minimal S4D of Gu et al. (2022) materialises the ``(channels, state/2, length)``
Vandermonde tensor ``exp(dt A l)`` and contracts it with an einsum, then convolves
by ``torch.fft``.  seqarch's S4D computes the same kernel as a blocked real matrix
product (``seqarch.modules.vandermonde``) without that tensor.  Both run inside the
same layer (only the kernel generator's ``forward`` differs), forward+backward, each in a fresh worker
process for the peak-memory measure.

    python scripts/bench_s4d.py                      # batch 1, width 256, state 64, L = 1k, 4k, 16k
"""

from __future__ import annotations

import argparse
import json
import sys

import benchlib
import torch


def minimal_kernel(layer, length: int, dtype: torch.dtype) -> torch.Tensor:
    """The materialising Vandermonde product of the S4D paper's minimal code."""
    kernel = layer.kernel
    a = torch.complex(-torch.exp(kernel.log_a_real.to(dtype)), kernel.a_imag.to(dtype))
    dt_a = torch.exp(kernel.log_dt.to(dtype)).unsqueeze(-1) * a  # (H, N/2)
    powers = dt_a.unsqueeze(-1) * torch.arange(length, device=a.device, dtype=dtype)  # (H, N/2, L)
    c = torch.view_as_complex(kernel.C.to(dtype).contiguous()) * (torch.exp(dt_a) - 1.0) / a
    return 2 * torch.einsum("dhn,hnl->dhl", c, torch.exp(powers)).real


def worker(args: argparse.Namespace) -> None:
    from seqarch.mixers.s4d import S4D

    device = torch.device(args.device)
    torch.manual_seed(0)
    layer = S4D(args.width, d_state=args.state, device=device)
    if args.variant == "minimal":
        layer.kernel.forward = lambda length, dtype=None: minimal_kernel(layer, length, torch.float32)
    x = torch.randn(args.batch, args.length, args.width, device=device, requires_grad=True)

    def forward_backward():
        layer(x).square().mean().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    peak = benchlib.peak_memory(forward_backward, device)
    seconds = benchlib.median_time(forward_backward, device, repeats=args.repeats)
    print(json.dumps({"variant": args.variant, "length": args.length, "seconds": seconds, "peak_bytes": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--state", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    benchlib.add_device_and_out(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["seqarch", "minimal"], help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out or benchlib.default_out(args.device)
    if args.worker:
        return worker(args)
    results = []
    for length in args.lengths:
        for variant in ("minimal", "seqarch"):
            row = benchlib.run_worker(__file__, [
                "--variant", variant, "--length", str(length), "--width", str(args.width), "--state",
                str(args.state), "--batch", str(args.batch), "--repeats", str(args.repeats), "--device", args.device,
            ], timeout=900)
            row.setdefault("variant", variant)
            row.setdefault("length", length)
            results.append(row)
            sys.stderr.write(f"{variant:>8} L={length}: {row.get('seconds', row.get('error'))}\n")
    rows = []
    for length in args.lengths:
        mine = next(r for r in results if r["length"] == length and r["variant"] == "seqarch")
        base = next(r for r in results if r["length"] == length and r["variant"] == "minimal")
        if "seconds" not in mine or "seconds" not in base:
            rows.append([length, "-", "-", "-", "-", "-", "-"])
            continue
        rows.append([length, f"{base['seconds'] * 1e3:.1f}", f"{mine['seconds'] * 1e3:.1f}",
                     f"{base['seconds'] / mine['seconds']:.2f}x", f"{base['peak_bytes'] / 2**20:.0f}",
                     f"{mine['peak_bytes'] / 2**20:.0f}",
                     f"{base['peak_bytes'] / max(mine['peak_bytes'], 1):.2f}x"])
    device = torch.device(args.device)
    text = (
        f"# S4D forward+backward: seqarch vs the minimal materialising formulation\n\n"
        f"Device: {benchlib.device_name(device)}; batch {args.batch}, width {args.width}, state {args.state}, "
        f"float32. Command: `{benchlib.command_line()}`. "
        f"Median of {args.repeats} warm runs; memory is "
        + ("CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS growth in a fresh process")
        + ".\n\n"
        + benchlib.markdown_table(["length", "minimal ms", "seqarch ms", "speed-up", "minimal MiB",
                                   "seqarch MiB", "memory ratio"], rows)
    )
    payload = {"device": benchlib.device_name(device), "environment": benchlib.environment(),
               "batch": args.batch, "width": args.width, "state": args.state, "results": results}
    json_path, md_path = benchlib.write_report(args.out, "bench_s4d", payload, text)
    sys.stdout.write(text + f"\nwrote {json_path} and {md_path}\n")


if __name__ == "__main__":
    main()
