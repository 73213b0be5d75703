"""Mamba-2 on the CPU: the SSD twin against a per-position loop and against S4D, memory growth, step cost.

Four measurements, side by side in one run (float32):

1. the ``ssd`` op's PyTorch twin (the chunked algorithm), forward+backward, against the direct
   recurrence in PyTorch (a step per position, autograd through every step), at batch 8,
   ``d_inner = 512`` (8 heads of 64, from ``d_model = 256`` and expand 2), state 64.  The loop's
   autograd graph holds one state per position (4 GiB at length 4096), so it runs at a shorter
   ``--loop-length`` and its time is scaled by the length ratio (a loop's steps all cost the same);
   the twin runs at both lengths;
2. the Mamba-2 layer against the S4D layer, forward+backward, batch 8, width 256, length 4096;
3. the bytes autograd saves for the backward (the activation memory) of a Mamba-2 layer, at a base
   shape and with batch, width (so ``d_inner``), length and state each doubled;
4. the recurrent step at position 16 and at position 4096.

    nice python scripts/bench_mamba2.py --threads 1
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import benchlib
import torch

import seqarch
from seqarch.kernels import use_backend
from seqarch.kernels.ssd import DEFAULT_CHUNK_SIZE, ssd_recurrence, ssd_reference


def ssd_inputs(batch: int, length: int, heads: int, d_state: int, head_dim: int = 64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, heads, head_dim, generator=gen)
    dt = torch.nn.functional.softplus(torch.randn(batch, length, heads, generator=gen) - 3)
    A = -torch.linspace(1.0, 16.0, heads)
    B, C = (torch.randn(batch, length, 1, d_state, generator=gen) * d_state ** -0.5 for _ in range(2))
    return [t.requires_grad_() for t in (x, dt, A, B, C)]


def layer_fwd_bwd(name: str, batch: int, width: int, length: int):
    """A call of one forward+backward of a fresh ``name`` layer, and the layer."""
    torch.manual_seed(0)
    mixer = seqarch.build_mixer(name, width)
    x = torch.randn(batch, length, width, requires_grad=True)

    def run():
        mixer(x).square().mean().backward()
        x.grad = None
        mixer.zero_grad(set_to_none=True)

    return run, mixer


def saved_bytes(batch: int, width: int, length: int, d_state: int) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one Mamba-2 forward."""
    torch.manual_seed(0)
    mixer = seqarch.build_mixer("mamba2", width, d_state=d_state)
    x = torch.randn(batch, length, width, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = mixer(x)
    del y
    return sum(storages.values())


def step_seconds(width: int, position: int, steps: int) -> float:
    torch.manual_seed(0)
    mixer = seqarch.build_mixer("mamba2", width).eval()
    with torch.no_grad():
        _, state = mixer.prefill(torch.randn(1, position, width))
        tokens = torch.randn(steps + 1, 1, width)
        holder = {"state": state, "i": 0}

        def one_step():
            _, holder["state"] = mixer.step(tokens[holder["i"] % (steps + 1)], holder["state"])
            holder["i"] += 1

        return benchlib.median_time(one_step, torch.device("cpu"), repeats=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--loop-length", type=int, default=512, help="length the per-position loop runs at")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[16, 32, 64],
                        help="chunk sizes the twin is also timed at (the default chunk is the op's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=benchlib.default_out("cpu"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {"device": benchlib.device_name(torch.device("cpu")), "environment": benchlib.environment(),
                    "command": benchlib.command_line()}
    heads, d_state = 2 * args.width // 64, 64

    # 1. the twin against the loop, and the twin at each chunk size; all timed in alternation
    cpu = torch.device("cpu")
    long_inputs = ssd_inputs(args.batch, args.length, heads, d_state)
    short_inputs = ssd_inputs(args.batch, args.loop_length, heads, d_state)
    with use_backend("torch"):
        twin_runs = {f"twin_chunk{q}_s": benchlib.forward_backward_call(functools.partial(ssd_reference, chunk_size=q),
                                                                        long_inputs)
                     for q in args.chunk_sizes if q != DEFAULT_CHUNK_SIZE}
        timed = benchlib.alternating_median_times({
            "twin_s": benchlib.forward_backward_call(ssd_reference, long_inputs), **twin_runs,
            "twin_short_s": benchlib.forward_backward_call(ssd_reference, short_inputs),
            "loop_short_s": benchlib.forward_backward_call(ssd_recurrence, short_inputs)}, cpu, repeats=args.repeats)
    twin, twin_short, loop_short = timed["twin_s"], timed["twin_short_s"], timed["loop_short_s"]
    loop = loop_short * args.length / args.loop_length
    report["ssd"] = {**timed, "chunk_size": DEFAULT_CHUNK_SIZE, "loop_scaled_s": loop, "speedup": loop / twin,
                     "speedup_same_length": loop_short / twin_short}
    sys.stderr.write(f"ssd: {report['ssd']}\n")

    # 2. the layers, with the FLOPs each does (forward, one sequence) beside their times
    with use_backend("torch"):
        (mamba2_run, mamba2_layer), (s4d_run, s4d_layer) = (layer_fwd_bwd(name, args.batch, args.width, args.length)
                                                            for name in ("mamba2", "s4d"))
        layer_times = benchlib.alternating_median_times({"mamba2": mamba2_run, "s4d": s4d_run}, cpu,
                                                        repeats=args.repeats)
    mamba2, s4d = layer_times["mamba2"], layer_times["s4d"]
    flop_ratio = mamba2_layer.flops(args.length) / s4d_layer.flops(args.length)
    report["layers"] = {"mamba2_s": mamba2, "s4d_s": s4d, "ratio": mamba2 / s4d, "flop_ratio": flop_ratio}
    sys.stderr.write(f"layers: {report['layers']}\n")

    # 3. activation memory
    base = {"batch": 2, "width": 128, "length": 1024, "d_state": 64}
    base_bytes = saved_bytes(**base)
    memory = {"base": base, "base_bytes": base_bytes}
    for key, value in base.items():
        doubled = saved_bytes(**{**base, key: 2 * value})
        memory[f"x2_{key}"] = doubled / base_bytes
    report["memory"] = memory
    sys.stderr.write(f"memory: {memory}\n")

    # 4. the step
    early, late = step_seconds(args.width, 16, 50), step_seconds(args.width, 4096, 50)
    report["step"] = {"pos16_s": early, "pos4096_s": late, "ratio": late / early}

    rows = [
        ["ssd twin fwd+bwd vs per-position loop", f"b={args.batch} L={args.length} d_inner={2 * args.width} N=64",
         (f"{twin * 1e3:.0f} ms vs {loop * 1e3:.0f} ms (loop at L={args.loop_length}: {loop_short * 1e3:.0f} ms, "
         f"twin {twin_short * 1e3:.0f} ms)"),
         f"{loop / twin:.1f}x ({loop_short / twin_short:.1f}x at L={args.loop_length})",
         ">= 20x"],
        *[[f"ssd twin fwd+bwd at chunk size {q} vs the default chunk ({DEFAULT_CHUNK_SIZE})",
           f"b={args.batch} L={args.length}", f"{timed[f'twin_chunk{q}_s'] * 1e3:.0f} ms vs {twin * 1e3:.0f} ms",
           f"{timed[f'twin_chunk{q}_s'] / twin:.2f}x", ""] for q in args.chunk_sizes if q != DEFAULT_CHUNK_SIZE],
        ["mamba2 layer fwd+bwd vs s4d layer", f"b={args.batch} L={args.length} d={args.width}",
         f"{mamba2 * 1e3:.0f} ms vs {s4d * 1e3:.0f} ms", f"{mamba2 / s4d:.2f}x", "<= 2x"],
        ["mamba2 layer's forward FLOPs vs s4d's (`flops`)", f"L={args.length} d={args.width}", "",
         f"{flop_ratio:.2f}x", ""],
        *[[f"saved activations, {key} doubled", f"base b=2 d=128 L=1024 N=64 ({base_bytes / 2**20:.0f} MiB)",
           "", f"{memory[f'x2_{key}']:.2f}x", "~2x" if key != "d_state" else "well under 2x"] for key in base],
        ["step at position 4096 vs 16", f"d={args.width} b=1", f"{late * 1e6:.0f} us vs {early * 1e6:.0f} us",
         f"{late / early:.2f}x", "<= 1.2x"],
    ]
    text = (f"# Mamba-2 on the CPU\n\n{report['device']}, float32, the PyTorch twin. Command: `{report['command']}`."
            f" Median of {args.repeats} rounds that time every variant in turn (the loop runs at "
            f"L={args.loop_length}, its time scaled by the length ratio). Memory: bytes autograd saves for the "
            "backward.\n\n"
            + benchlib.markdown_table(["measure", "shape", "times", "ratio", "target"], rows))
    json_path, md_path = benchlib.write_report(args.out, "bench_mamba2", report, text)
    sys.stdout.write(text + f"\nwrote {json_path} and {md_path}\n")


if __name__ == "__main__":
    main()
