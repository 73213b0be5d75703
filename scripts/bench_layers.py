"""Layer benchmark: forward+backward time and peak memory of every mixer over sequence lengths.

    python scripts/bench_layers.py                      # all mixers, width 256, L = 256 .. 16k
    python scripts/bench_layers.py --mixers attention s4d --lengths 1024 4096
    python scripts/bench_layers.py --mixers mamba2 s4d attention --lengths 4096

Each (mixer, length) runs in a fresh worker process, so the CPU's peak-RSS memory
measure is not hidden by an earlier run.  Once a mixer exceeds ``--max-seconds`` at
some length, its longer lengths are skipped (marked in the report).  Writes
``bench_layers.json`` and ``bench_layers.md`` to ``--out`` and states, for each
sub-quadratic mixer, the shortest length from which its forward+backward is
cheaper than attention's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import benchlib
import torch

DEFAULT_LENGTHS = [256, 512, 1024, 2048, 4096, 8192, 16384]


def worker(args: argparse.Namespace) -> None:
    import seqarch

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    mixer = seqarch.build_mixer(args.mixer, args.width, device=device, dtype=dtype,
                                **({"max_length": args.length} if args.mixer in ("m2", "s4", "hyena") else {}))
    x = torch.randn(args.batch, args.length, args.width, device=device, dtype=dtype, requires_grad=True)

    def forward_backward():
        mixer(x).float().square().mean().backward()
        x.grad = None
        mixer.zero_grad(set_to_none=True)

    peak = benchlib.peak_memory(forward_backward, device)
    seconds = benchlib.median_time(forward_backward, device, repeats=args.repeats)
    print(json.dumps({"mixer": args.mixer, "length": args.length, "seconds": seconds, "peak_bytes": peak,
                      "train_flops": 3 * args.batch * mixer.flops(args.length)}))


def crossover(results: list[dict], mixer: str, lengths: list[int]) -> int | None:
    """Shortest measured length from which ``mixer`` is faster than attention at every longer one."""
    def seconds(name, length):
        hit = [r for r in results if r["mixer"] == name and r["length"] == length and "seconds" in r]
        return hit[0]["seconds"] if hit else None

    best = None
    for length in reversed(lengths):
        mine, theirs = seconds(mixer, length), seconds("attention", length)
        if mine is None:
            continue
        if theirs is not None and mine >= theirs:
            break
        if theirs is None and best is None:
            # Attention did not finish at this length while the mixer did.
            best = length
            continue
        best = length
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", default=None, help="mixer names (default: all registered)")
    parser.add_argument("--lengths", nargs="+", type=int, default=DEFAULT_LENGTHS)
    parser.add_argument("--width", type=int, default=256, help="d_model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="skip longer lengths of a mixer once one forward+backward takes longer")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per worker")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: scripts/results/cpu or scripts/results/cuda)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mixer", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out or benchlib.default_out(args.device)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.worker:
        return worker(args)

    mixers = benchlib.mixer_names(parser, args.mixers)
    lengths = sorted(args.lengths)
    results = []
    for name in mixers:
        too_slow = False
        for length in lengths:
            if too_slow:
                results.append({"mixer": name, "length": length,
                                "error": "skipped: a shorter length exceeded --max-seconds"})
                continue
            common = ["--mixer", name, "--length", str(length), "--width", str(args.width), "--batch",
                      str(args.batch), "--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats)]
            row = benchlib.run_worker(__file__, common, args.timeout)
            row.setdefault("mixer", name)
            row.setdefault("length", length)
            results.append(row)
            sys.stderr.write(f"{name:>10} L={length:>6}: {row.get('seconds', row.get('error'))}\n")
            too_slow = "error" in row or row["seconds"] > args.max_seconds

    device = torch.device(args.device)
    header = ["length"] + [f"{m} ms" for m in mixers] + [f"{m} MiB" for m in mixers]
    rows = []
    for length in lengths:
        cells = {r["mixer"]: r for r in results if r["length"] == length}
        times = [f"{cells[m]['seconds'] * 1e3:.1f}" if "seconds" in cells[m] else "-" for m in mixers]
        mems = [f"{cells[m]['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in cells[m] else "-" for m in mixers]
        rows.append([length] + times + mems)
    crossovers = {m: crossover(results, m, lengths) for m in mixers if m != "attention"}
    lines = [
        f"# Layer benchmark: forward+backward, d_model={args.width}, batch={args.batch}, {args.dtype}",
        "",
        f"Device: {benchlib.device_name(device)}. Command: `{benchlib.command_line()}`. "
        f"Median of {args.repeats} warm runs; memory is "
        + ("CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS growth in a fresh process")
        + "; '-' means not run (see the JSON).",
        "",
        benchlib.markdown_table(header, rows),
        ("Shortest length from which each mixer's forward+backward is faster than attention's "
         "(at every longer measured length):"),
        "",
    ]
    for m, length in crossovers.items():
        lines.append(f"- `{m}`: " + (f"L = {length}" if length else "not within the measured lengths"))
    payload = {"width": args.width, "batch": args.batch, "dtype": args.dtype, "device": benchlib.device_name(device),
               "environment": benchlib.environment(), "results": results, "crossover_length": crossovers}
    json_path, md_path = benchlib.write_report(args.out, "bench_layers", payload, "\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + f"\n\nwrote {json_path} and {md_path}\n")


if __name__ == "__main__":
    main()
