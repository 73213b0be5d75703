"""S4 against S4D, forward+backward, side by side in one process.

Both layers are built at the same width and state size and timed alternately
(S4D, S4, S4D, S4, ...) so that load from other processes on a shared CPU falls on
both; the S4/S4D ratio of the medians is the number to compare across runs.

    python scripts/bench_s4_vs_s4d.py                 # B=8, d_model=256, L=1024, float32, 1 thread

S4 is built with ``max_length`` = the timed length (where the layer takes that option):
the kernel length its learned ``C~`` is defined by, i.e. a model trained at that length.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import sys

import benchlib
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--state", type=int, default=None, help="d_state of both layers (default: each layer's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import seqarch

    torch.set_num_threads(args.threads)
    options = {} if args.state is None else {"d_state": args.state}
    torch.manual_seed(0)
    layers = {}
    for name in ("s4d", "s4"):
        takes_length = "max_length" in inspect.signature(seqarch.MIXERS[name].__init__).parameters
        layers[name] = seqarch.build_mixer(name, args.width, **options,
                                           **({"max_length": args.length} if takes_length else {}))
    x = torch.randn(args.batch, args.length, args.width, requires_grad=True)

    def forward_backward(layer: torch.nn.Module) -> None:
        layer(x).square().mean().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    medians = benchlib.alternating_median_times(
        {name: functools.partial(forward_backward, layer) for name, layer in layers.items()}, torch.device("cpu"),
        repeats=args.repeats)
    result = {
        "batch": args.batch, "width": args.width, "length": args.length, "threads": args.threads,
        "d_state": {name: layer.d_state for name, layer in layers.items()},
        "median_seconds": medians, "s4_over_s4d": medians["s4"] / medians["s4d"],
        "flops": {name: layer.flops(args.length) for name, layer in layers.items()},
        "torch": torch.__version__,
    }
    sys.stdout.write(
        f"B={args.batch} d_model={args.width} L={args.length} float32, {args.threads} thread(s), "
        f"median of {args.repeats}: s4d {medians['s4d'] * 1e3:.1f} ms, s4 {medians['s4'] * 1e3:.1f} ms, "
        f"S4/S4D = {result['s4_over_s4d']:.2f}\n"
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
