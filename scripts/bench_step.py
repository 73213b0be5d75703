"""Recurrent step cost per token against the position in the sequence, for every causal mixer.

S4, S4D, Mamba, Mamba-2, H3 and the modal (distilled) Hyena carry a fixed-size state,
so a step costs the same at every position; attention reads a KV cache that grows
with the position; M2's and Hyena's long convolutions have implicit filters with no
finite recurrent state, so their step is a dot product with the whole history
(O(position * d_model)).

    python scripts/bench_step.py                      # width 256, positions 0 .. 4096
"""

from __future__ import annotations

import argparse
import math
import sys

import benchlib
import torch


def step_seconds(mixer, position: int, batch: int, steps: int, device: torch.device) -> float:
    """Median seconds of one ``step`` after ``position`` tokens were read (by ``prefill``)."""
    width = mixer.d_model
    state = mixer.init_state(batch, device=device, max_length=position + steps + 1)
    if position:
        _, state = mixer.prefill(torch.randn(batch, position, width, device=device), state)
    tokens = torch.randn(steps + 1, batch, width, device=device)
    holder = {"state": state, "i": 0}

    def one_step():
        _, holder["state"] = mixer.step(tokens[holder["i"] % (steps + 1)], holder["state"])
        holder["i"] += 1

    return benchlib.median_time(one_step, device, repeats=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", nargs="+", type=int, default=[0, 256, 1024, 4096])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per position (median)")
    parser.add_argument("--rounds", type=benchlib.positive_int, default=5,
                        help="rounds over every mixer and position in turn; the fastest round's median is kept "
                             "(a machine whose speed drifts then moves every position alike)")
    benchlib.add_device_and_out(parser)
    args = parser.parse_args()
    args.out = args.out or benchlib.default_out(args.device)

    import seqarch

    device = torch.device(args.device)
    max_length = max(args.positions) + args.steps + 2
    results = {}
    mixers = {}
    for name in sorted(seqarch.MIXERS):
        torch.manual_seed(0)
        options = {"max_length": max_length} if name in ("attention", "m2", "hyena", "s4") else {}
        if name == "mamba2":  # heads of 64 channels where they divide d_inner = 2 width, smaller ones else
            options["head_dim"] = math.gcd(64, 2 * args.width)
        mixers[name] = seqarch.build_mixer(name, args.width, device=device, **options).eval()
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, mixer in mixers.items():
                times = results.setdefault(name, {})
                for p in args.positions:
                    times[p] = min(times.get(p, math.inf), step_seconds(mixer, p, args.batch, args.steps, device))
    for name, times in results.items():
        sys.stderr.write(f"{name}: {times}\n")
    first, last = min(args.positions), max(args.positions)
    rows = [[name] + [f"{times[p] * 1e6:.0f}" for p in args.positions] + [f"{times[last] / times[first]:.2f}"]
            for name, times in results.items()]
    text = (
        f"# Recurrent step: microseconds per token against position\n\n"
        f"Device: {benchlib.device_name(device)}; width {args.width}, batch {args.batch}, float32. Command: "
        f"`{benchlib.command_line()}`. Median of {args.steps} steps at each position, the fastest of "
        f"{args.rounds} rounds over every mixer and position in turn.\n\n"
        + benchlib.markdown_table(["mixer"] + [f"pos {p} us" for p in args.positions]
                                  + [f"pos {last} / pos {first}"], rows)
    )
    payload = {"device": benchlib.device_name(device), "environment": benchlib.environment(),
               "width": args.width, "batch": args.batch, "seconds_per_step": results}
    json_path, md_path = benchlib.write_report(args.out, "bench_step", payload, text)
    sys.stdout.write(text + f"\nwrote {json_path} and {md_path}\n")


if __name__ == "__main__":
    main()
