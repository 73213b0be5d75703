"""The chunked PyTorch twins of the linear-attention ops against their token-by-token recurrences and
softmax attention, forward, at one shape (side by side in one run).

    python scripts/bench_linear_attention.py                      # B=8, d=256 (4 heads of 64), L=4096
    python scripts/bench_linear_attention.py --length 1024 --threads 1

Rows: ``chunked_linear_attention`` with no decay, a per-head decay (RetNet) and a per-channel decay
(GLA); ``delta_rule`` plain and gated; each timed as its chunked twin (the CPU path) and as the
float64-free token-by-token recurrence in the same dtype, forward and forward+backward (the twin is the
CPU training path); causal softmax attention (SDPA, forward) at the same shape is the common
reference.  Ratios: recurrence / chunked and attention / chunked.
"""

from __future__ import annotations

import argparse

import benchlib
import torch
import torch.nn.functional as F

from seqarch.kernels.chunked_linear_attention import chunked_linear_attention_reference, linear_attention_recurrence
from seqarch.kernels.delta_rule import delta_rule_recurrence, delta_rule_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loop-length", type=int, default=512,
                        help="tokens the recurrence's forward+backward runs (its time scaled by the length ratio)")
    parser.add_argument("--out", default=None, help="report folder (default scripts/results/cpu)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    head = args.width // args.heads
    shape = (args.batch, args.heads, args.length, head)
    q, k, v = torch.randn(shape) * head ** -0.5, F.normalize(torch.randn(shape), dim=-1), torch.randn(shape)
    beta = torch.rand(shape[:3])
    per_head, per_channel = -0.05 * torch.rand(shape[:3]), -0.05 * torch.rand(shape)
    # each case: (chunked twin, recurrence), both taking (q, k, v, beta, per-head decay, per-channel decay)
    cases = {
        "linear attention (no decay)": (lambda q, k, v, b, h, c: chunked_linear_attention_reference(q, k, v),
                                        lambda q, k, v, b, h, c: linear_attention_recurrence(q, k, v)),
        "retnet (per-head decay)": (lambda q, k, v, b, h, c: chunked_linear_attention_reference(q, k, v, h),
                                    lambda q, k, v, b, h, c: linear_attention_recurrence(q, k, v, h)),
        "gla (per-channel decay)": (lambda q, k, v, b, h, c: chunked_linear_attention_reference(q, k, v, c),
                                    lambda q, k, v, b, h, c: linear_attention_recurrence(q, k, v, c)),
        "deltanet": (lambda q, k, v, b, h, c: delta_rule_reference(q, k, v, b),
                     lambda q, k, v, b, h, c: delta_rule_recurrence(q, k, v, b)),
        "gated deltanet": (lambda q, k, v, b, h, c: delta_rule_reference(q, k, v, b, h),
                           lambda q, k, v, b, h, c: delta_rule_recurrence(q, k, v, b, h)),
    }
    inputs = (q, k, v, beta, per_head, per_channel)
    # The recurrence's forward+backward keeps a graph of every token's ops; it runs on the first
    # --loop-length tokens and its time is scaled by the length ratio (every token costs the same).
    short = tuple(t[:, :, :args.loop_length] for t in inputs)
    scale = args.length / args.loop_length

    def forward(fn, tensors=inputs):
        def run():
            with torch.no_grad():
                fn(*tensors)
        return run

    def causal_attention(q, k, v, *_):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    attention = benchlib.median_time(forward(causal_attention), device, repeats=args.repeats)
    rows, payload = [], {"shape": vars(args), "attention_seconds": attention, "rows": []}
    for name, (chunked, recurrent) in cases.items():
        timed = benchlib.alternating_median_times({
            "forward": forward(chunked), "forward recurrence": forward(recurrent),
            "forward+backward": benchlib.forward_backward_call(chunked, inputs),
            "forward+backward recurrence": benchlib.forward_backward_call(recurrent, short)},
            device, repeats=args.repeats)
        timed["forward+backward recurrence"] *= scale
        for mode in ("forward", "forward+backward"):
            twin_s, recurrence_s = timed[mode], timed[f"{mode} recurrence"]
            payload["rows"].append({"op": name, "mode": mode, "chunked_seconds": twin_s,
                                    "recurrence_seconds": recurrence_s})
            rows.append([name, mode, f"{twin_s * 1e3:.0f}", f"{recurrence_s * 1e3:.0f}",
                         f"{recurrence_s / twin_s:.1f}x", f"{attention / twin_s:.2f}x" if mode == "forward" else "-"])
    rows.append(["causal softmax attention (SDPA)", "forward", f"{attention * 1e3:.0f}", "-", "-", "1.00x"])
    payload["environment"] = benchlib.environment()
    markdown = (f"# Chunked linear-attention twins against their recurrences (CPU)\n\n`{benchlib.command_line()}`\n\n"
                f"B={args.batch}, d={args.width} ({args.heads} heads of {head}), L={args.length}, float32, "
                f"{args.threads} thread(s); the median of {args.repeats} rounds that time the twin and the "
                "recurrence in turn. Forward: under no_grad; forward+backward: the gradients of every input, the "
                f"recurrence's on the first {args.loop_length} tokens, scaled by the length ratio.\n\n"
                + benchlib.markdown_table(["op", "mode", "chunked twin ms", "recurrence ms", "recurrence / chunked",
                                           "attention / chunked"], rows))
    out = benchlib.default_out("cpu") if args.out is None else __import__("pathlib").Path(args.out)
    for path in benchlib.write_report(out, "bench_linear_attention", payload, markdown):
        print(f"wrote {path}")
    print(markdown)


if __name__ == "__main__":
    main()
