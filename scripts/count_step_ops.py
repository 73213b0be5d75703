"""Operators dispatched per decoding step, per model: where an eager step's time goes at batch 1.

    python scripts/count_step_ops.py --match-params                # the models bench_generate.py times
    python scripts/count_step_ops.py --mixers attention mamba2 --by-line

At batch 1 on a CPU a decoding step of a small model costs mostly a fixed price per operator
(dispatch, a kernel launch, an allocation) and the reads of its weights, so the number of operators
a step dispatches is the count to bring down.  Each model (built as ``bench_generate.py`` builds
it, with ``--match-params`` resized to the attention model's parameters) reads a prompt, then
``--steps`` decoding steps run under a ``TorchDispatchMode`` that counts every ATen operator they
dispatch (views included; an operator a composite decomposes into counts once per part; a ``.to``
that changes nothing dispatches none).  Counts, not times: they are the same on every machine.
``--by-line`` adds, per model, the operators per step of each line of seqarch and its kernels.
"""

from __future__ import annotations

import argparse
import collections
import traceback
from pathlib import Path

import benchlib
import torch
from bench_generate import VOCAB, build
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
OWN = (str(ROOT / "seqarch"), str(ROOT / "kernels"))


def own_line() -> str:
    """The innermost frame of seqarch or its kernels that is running: ``path:line``."""
    frames = [f for f in traceback.extract_stack() if f.filename.startswith(OWN)]
    return f"{Path(frames[-1].filename).relative_to(ROOT)}:{frames[-1].lineno}" if frames else "(outside seqarch)"


class OperatorCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active; with ``by_line``, also per source line."""

    def __init__(self, by_line: bool) -> None:
        super().__init__()
        self.total, self.by_line = 0, collections.Counter() if by_line else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        if self.by_line is not None:
            self.by_line[f"{own_line()} {func.__name__}"] += 1
        return func(*args, **(kwargs or {}))


def count(name: str, args: argparse.Namespace) -> dict:
    model = build(name, args, torch.device("cpu"))
    prompt = torch.randint(0, VOCAB, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = model.backbone.init_state(1, max_length=args.prompt + args.steps)
        features, states = model.backbone.prefill(prompt, states)
        token = model.head(features[:, -1]).argmax(-1)
        counter = OperatorCounter(args.by_line)
        with counter:
            for _ in range(args.steps):
                logits, states = model.decode_step(token, states, check=False)
                token = logits.argmax(-1)
    row = {"ops_per_step": counter.total / args.steps, "d_model": model.config.d_model,
           "params": sum(p.numel() for p in model.parameters())}
    if counter.by_line is not None:
        row["by_line"] = {k: v / args.steps for k, v in sorted(counter.by_line.items())}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", default=None, help="mixer names (default: every mixer)")
    parser.add_argument("--width", type=benchlib.positive_int, default=256)
    parser.add_argument("--layers", type=benchlib.positive_int, default=4)
    parser.add_argument("--prompt", type=benchlib.positive_int, default=128)
    parser.add_argument("--steps", type=benchlib.positive_int, default=8, help="decoding steps counted")
    parser.add_argument("--match-params", action="store_true",
                        help="resize every model in width to the attention model's parameter count")
    parser.add_argument("--by-line", action="store_true", help="also count per source line")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: scripts/results/cpu)")
    args = parser.parse_args()
    args.new_tokens = args.steps  # build() sizes the models' max_length from prompt + new tokens
    out = args.out or benchlib.default_out("cpu")

    names = benchlib.mixer_names(parser, args.mixers)
    if "attention" not in names:
        names = ["attention", *names]
    results = {name: count(name, args) for name in names}
    base = results["attention"]["ops_per_step"]
    rows = [[name, f"{r['ops_per_step']:.1f}", f"{r['ops_per_step'] / base:.2f}", r["d_model"],
             f"{r['params'] / 1e6:.2f}"] for name, r in results.items()]
    sizing = "resized in width to the attention model's parameters" if args.match_params else "at the same width"
    markdown = (f"# ATen operators dispatched per decoding step\n\nBatch 1, d_model {args.width}, {args.layers} "
                f"layers, prompt {args.prompt}, {args.steps} steps counted, float32, every model {sizing}. "
                f"Command: `{benchlib.command_line()}`.\n\n"
                + benchlib.markdown_table(["model", "ops / step", "this / attention", "d_model", "params (M)"], rows))
    if args.by_line:
        for name, r in results.items():
            markdown += f"\n## {name}: operators per step by line\n\n" + benchlib.markdown_table(
                ["line operator", "per step"], [[k, f"{v:.1f}"] for k, v in r["by_line"].items()])
    payload = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "environment": benchlib.environment(),
               "command": benchlib.command_line(), "results": results}
    for path in benchlib.write_report(out, "count_step_ops", payload, markdown):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
