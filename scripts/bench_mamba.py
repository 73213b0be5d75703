"""Mamba's CPU path side by side in one run: speed, memory scaling and step cost.

    nice python scripts/bench_mamba.py --threads 1          # the target shapes (a few minutes)
    python scripts/bench_mamba.py --batch 2 --length 1024   # smaller

Three questions, each measured in fresh worker processes (the CPU's peak-RSS measure only grows):

1. Speed: forward+backward of a Mamba layer (``d_model``, ``d_inner = 2 d_model``, state 16) on the
   chunked PyTorch twin of the selective scan, against the same layer with the scan as a PyTorch loop
   over time (``offtheshelf_selective_scan``) and against an S4D layer of the same width.
2. Memory: the peak of one forward+backward as the length doubles (should double) and as the
   state grows 16x (should stay nearly flat: nothing ``batch x d_inner x length x state`` is held).
3. Step: one recurrent ``step`` after 16 and after 4096 prefilled tokens (should cost the same).

Writes ``bench_mamba.json`` and ``bench_mamba.md`` to ``--out`` (default ``scripts/results/cpu``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import benchlib
import torch


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    import seqarch
    import seqarch.mixers.mamba as mamba_module
    from seqarch.kernels.selective_scan import offtheshelf_selective_scan

    torch.manual_seed(0)
    if args.variant == "loop":
        mamba_module.selective_scan = offtheshelf_selective_scan  # the same layer, its scan a loop over time
    name = "s4d" if args.variant == "s4d" else "mamba"
    options = {} if name == "s4d" else {"d_state": args.state}
    mixer = seqarch.build_mixer(name, args.width, **options)
    x = torch.randn(args.batch, args.length, args.width, requires_grad=True)

    def forward_backward():
        mixer(x).square().mean().backward()
        x.grad = None
        mixer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    peak = benchlib.peak_memory(forward_backward, torch.device("cpu"))  # also the warm-up
    times = [time.perf_counter() - start] if args.repeats == 0 else []  # --repeats 0: time that run
    for _ in range(args.repeats):
        start = time.perf_counter()
        forward_backward()
        times.append(time.perf_counter() - start)
    print(json.dumps({"variant": args.variant, "seconds": sorted(times)[len(times) // 2], "peak_bytes": peak,
                      "flops": mixer.flops(args.length)}))


def run(args: argparse.Namespace, variant: str, **changes) -> dict:
    shape = {"batch": args.batch, "width": args.width, "length": args.length, "state": 16, **changes}
    argv = ["--variant", variant, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    argv += [f"--{key}={value}" for key, value in shape.items()]
    result = benchlib.run_worker(__file__, argv, timeout=args.timeout)
    sys.stderr.write(f"{variant} {shape}: {result}\n")
    return {**shape, **result}


def median_run(results: list[dict]) -> dict:
    """The run of median time among ``results`` (a failed run, without a time, counts as the slowest)."""
    ordered = sorted(results, key=lambda r: r.get("seconds", float("inf")))
    return {**ordered[len(ordered) // 2], "rounds_seconds": [r.get("seconds") for r in results]}


def step_costs(args: argparse.Namespace) -> dict[int, float]:
    """Microseconds of one Mamba step at positions 16 and 4096 (batch 1)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_step import step_seconds

    import seqarch

    torch.manual_seed(0)
    mixer = seqarch.build_mixer("mamba", args.width).eval()
    with torch.no_grad():
        return {p: step_seconds(mixer, p, 1, args.steps, torch.device("cpu")) for p in (16, 4096)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="mamba", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=256, help="d_model")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs after the warm-up (median); 0: time the one (memory) run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating worker runs of mamba and s4d (the median reported; the loop runs once)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per position (median)")
    parser.add_argument("--memory-batch", type=int, default=2, help="batch of the memory-scaling runs")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per worker")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: scripts/results/cpu)")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    args.out = args.out or benchlib.default_out("cpu")

    # mamba and s4d in alternating fresh workers, --rounds times each (the medians reported), so a change
    # of load during the run reaches both; the loop (minutes) runs once.
    rounds = {"mamba": [], "s4d": []}
    for _ in range(args.rounds):
        for variant, results in rounds.items():
            results.append(run(args, variant))
    speed = {"mamba": median_run(rounds["mamba"]), "loop": run(args, "loop"), "s4d": median_run(rounds["s4d"])}
    small = {"batch": args.memory_batch, "length": args.length // 2}
    by_length = [run(args, "mamba", **{**small, "length": small["length"] // 2 * k}) for k in (1, 2)]
    by_state = [run(args, "mamba", **small, state=s) for s in (4, 16, 64)]
    steps = step_costs(args)

    def ratio(a, b, key):
        return a[key] / b[key] if key in a and key in b else float("nan")

    ratios = {
        "loop_over_twin_seconds": ratio(speed["loop"], speed["mamba"], "seconds"),
        # the median of the rounds' own ratios: each round's two workers ran back to back, under the same load
        "mamba_over_s4d_seconds": statistics.median(
            ratio(m, s, "seconds") for m, s in zip(rounds["mamba"], rounds["s4d"], strict=True)),
        "mamba_over_s4d_flops": ratio(speed["mamba"], speed["s4d"], "flops"),  # forward, one sequence (`flops`)
        "peak_2L_over_L": ratio(by_length[1], by_length[0], "peak_bytes"),
        "peak_state64_over_state4": ratio(by_state[2], by_state[0], "peak_bytes"),
        "step_4096_over_16": steps[4096] / steps[16],
    }
    targets = {"loop_over_twin_seconds": (">=", 20.0), "mamba_over_s4d_seconds": ("<=", 2.0),
               "peak_2L_over_L": ("<=", 2.2), "peak_state64_over_state4": ("<=", 1.5), "step_4096_over_16": ("<=", 1.2)}
    rows = []
    for key, value in ratios.items():
        if key not in targets:  # context for a ratio beside it, no target of its own
            rows.append([key, f"{value:.2f}", "", ""])
            continue
        relation, threshold = targets[key]
        met = value >= threshold if relation == ">=" else value <= threshold
        rows.append([key, f"{value:.2f}", f"{relation} {threshold:g}", "met" if met else "NOT met"])
    mib = 2 ** 20

    def fmt(r):
        return [r.get("batch"), r.get("length"), r.get("state"), f"{r.get('seconds', float('nan')):.2f}",
                f"{r.get('peak_bytes', 0) / mib:.0f}", r.get("error", "")]

    header = ["batch", "length", "state", "fwd+bwd s", "peak MiB", "error"]
    text = (
        "# Mamba on the CPU: the chunked twin against a loop over time and S4D, memory, step\n\n"
        f"Device: {benchlib.device_name(torch.device('cpu'))}. Command: `{benchlib.command_line()}`. "
        f"Width {args.width} (d_inner {2 * args.width}); each row a fresh worker process (mamba and s4d: the "
        f"median of {args.rounds} alternating workers); peak = peak RSS growth "
        "over one forward+backward; times "
        + (f"the median of {args.repeats} run(s) after a warm-up" if args.repeats else "of that one run (no warm-up)")
        + ".\n\n## Ratios (one run)\n\n" + benchlib.markdown_table(["ratio", "value", "target", ""], rows)
        + "\n## Speed (Mamba twin, Mamba with its scan as a loop over time, S4D)\n\n"
        + benchlib.markdown_table(["variant"] + header, [[v] + fmt(r) for v, r in speed.items()])
        + "\n## Memory against length and state (Mamba twin)\n\n"
        + benchlib.markdown_table(header, [fmt(r) for r in by_length + by_state])
        + f"\n## Step (batch 1, median of {args.steps} steps)\n\n"
        + benchlib.markdown_table(["position", "us per step"], [[p, f"{s * 1e6:.0f}"] for p, s in steps.items()])
    )
    payload = {"device": benchlib.device_name(torch.device("cpu")), "environment": benchlib.environment(),
               "ratios": ratios, "targets": {k: list(v) for k, v in targets.items()}, "speed": speed,
               "memory_by_length": by_length, "memory_by_state": by_state,
               "step_seconds": {str(p): s for p, s in steps.items()}}
    json_path, md_path = benchlib.write_report(args.out, "bench_mamba", payload, text)
    sys.stdout.write(text + f"\nwrote {json_path} and {md_path}\n")


if __name__ == "__main__":
    main()
