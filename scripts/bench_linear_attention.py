"""The chunked PyTorch twins of the linear-attention ops against their token-by-token recurrences and
softmax attention, forward, at one shape (side by side in one run).

    python scripts/bench_linear_attention.py                      # B=8, d=256 (4 heads of 64), L=4096
    python scripts/bench_linear_attention.py --length 1024 --threads 1

Rows: ``chunked_linear_attention`` with no decay, a per-head decay (RetNet) and a per-channel decay
(GLA); ``delta_rule`` plain and gated; each timed as its chunked twin (the CPU path) and as the
float64-free token-by-token recurrence in the same dtype; causal softmax attention (SDPA) at the same
shape is the common reference.  Ratios: recurrence / chunked and attention / chunked.
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
    cases = {
        "linear attention (no decay)": (lambda: chunked_linear_attention_reference(q, k, v),
                                        lambda: linear_attention_recurrence(q, k, v)),
        "retnet (per-head decay)": (lambda: chunked_linear_attention_reference(q, k, v, per_head),
                                    lambda: linear_attention_recurrence(q, k, v, per_head)),
        "gla (per-channel decay)": (lambda: chunked_linear_attention_reference(q, k, v, per_channel),
                                    lambda: linear_attention_recurrence(q, k, v, per_channel)),
        "deltanet": (lambda: delta_rule_reference(q, k, v, beta), lambda: delta_rule_recurrence(q, k, v, beta)),
        "gated deltanet": (lambda: delta_rule_reference(q, k, v, beta, per_head),
                           lambda: delta_rule_recurrence(q, k, v, beta, per_head)),
    }
    with torch.no_grad():
        attention = benchlib.median_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device,
                                         repeats=args.repeats)
        rows, payload = [], {"shape": vars(args), "attention_seconds": attention, "rows": []}
        for name, (chunked, recurrent) in cases.items():
            chunked_s = benchlib.median_time(chunked, device, repeats=args.repeats)
            recurrent_s = benchlib.median_time(recurrent, device, repeats=1)
            payload["rows"].append({"op": name, "chunked_seconds": chunked_s, "recurrence_seconds": recurrent_s})
            rows.append([name, f"{chunked_s * 1e3:.0f}", f"{recurrent_s * 1e3:.0f}", f"{recurrent_s / chunked_s:.1f}x",
                         f"{attention / chunked_s:.2f}x"])
    rows.append(["causal softmax attention (SDPA)", f"{attention * 1e3:.0f}", "-", "-", "1.00x"])
    payload["environment"] = benchlib.environment()
    markdown = (f"# Chunked linear-attention twins (CPU, forward)\n\n`{benchlib.command_line()}`\n\n"
                f"B={args.batch}, d={args.width} ({args.heads} heads of {head}), L={args.length}, float32, "
                f"{args.threads} thread(s), median of {args.repeats} (recurrences: 1).\n\n"
                + benchlib.markdown_table(["op", "chunked twin ms", "recurrence ms", "recurrence / chunked",
                                           "attention / chunked"], rows))
    out = benchlib.default_out("cpu") if args.out is None else __import__("pathlib").Path(args.out)
    for path in benchlib.write_report(out, "bench_linear_attention", payload, markdown):
        print(f"wrote {path}")
    print(markdown)


if __name__ == "__main__":
    main()
