"""Shared helpers of the benchmark scripts: timing, peak memory, worker subprocesses, reports.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated``; on the CPU, the growth of
the process's peak resident set during one forward+backward, measured in a fresh
worker process (so earlier measurements cannot hide it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of rounds or steps), else a clear error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def mixer_names(parser, names: list[str] | None) -> list[str]:
    """``--mixers`` checked against seqarch's registry (argparse's error names an unknown one);
    ``None``: every mixer."""
    import seqarch

    for name in names or []:
        if name not in seqarch.MIXERS:
            parser.error(f"--mixers: unknown mixer {name!r}; expected some of {sorted(seqarch.MIXERS)}")
    return names or sorted(seqarch.MIXERS)


def add_device_and_out(parser) -> None:
    """``--device`` (CUDA where there is one) and ``--out`` (the report folder), as every benchmark takes them."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: scripts/results/cpu or scripts/results/cuda)")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, *, repeats: int = 5,
                min_seconds: float = 0.0) -> float:
    """Median seconds of ``fn`` over ``repeats`` warm calls (one warm-up call first)."""
    fn()
    synchronize(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if len(times) >= 100:
            break
    return statistics.median(times)


def forward_backward_call(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                          tensors: Sequence[torch.Tensor]) -> Callable[[], None]:
    """A call of one forward+backward of ``fn(*tensors) -> (output, final state)``: the gradients of every
    input it uses (fresh leaves of ``tensors`` each call) of ``mean(output^2) + mean(state^2)``."""
    def run() -> None:
        leaves = [t.detach().requires_grad_() for t in tensors]
        output, state = fn(*leaves)
        torch.autograd.grad(output.square().mean() + state.square().mean(), leaves, allow_unused=True)

    return run


def alternating_median_times(fns: dict[str, Callable[[], object]], device: torch.device, *,
                             repeats: int = 3) -> dict[str, float]:
    """Median seconds of each of ``fns`` over ``repeats`` rounds that call every one in turn (one
    warm-up round first): a change of the machine's load during the run then reaches every variant
    alike, so their ratios stay fair on a shared machine."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes of memory ``fn`` needs at its peak beyond what was held before it ran
    (:class:`seqarch.memory.PeakMemory`'s ``growth_bytes``, the one peak-memory measure)."""
    from seqarch.memory import PeakMemory

    with PeakMemory(device) as memory:
        fn()
    return memory.growth_bytes


def run_worker(script: str, args: list[str], timeout: float) -> dict:
    """Run ``python script --worker ARGS`` and parse the JSON line it prints last.

    A worker that fails or times out gives ``{"error": ...}`` instead of stopping the sweep.
    """
    try:
        done = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_report(out_dir: Path, stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``stem.json`` and ``stem.md`` under ``out_dir``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command_line() -> str:
    """The command that is running, as a reader would type it from the repository root."""
    return " ".join(["python", f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def default_out(device: str) -> Path:
    """Where reports go by default: ``scripts/results/cpu`` or ``scripts/results/cuda``."""
    return Path(__file__).resolve().parent / "results" / ("cuda" if device.startswith("cuda") else "cpu")


def environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
