"""Comparison reports: ``results.json``, ``report.md`` and PNG plots.

Plots: the metric against training FLOPs, one line per architecture (the
Chinchilla/Zoology way of reading a comparison at matched compute), and, for recall
tasks, accuracy against recurrent state size (Zoology, figure 2: recall is bought
with state).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from .. import __version__
from ..data import DataBundle
from ..flops import describe_conventions
from .config import RunConfig
from .durable import write_atomic
from .optim import describe_learning_rates
from .result import RunResult

TABLE_COLUMNS = ("architecture", "d_model", "layers", "params", "budget error", "FLOPs/token", "training FLOPs",
                 "steps", "lr", "final", "best", "state size", "tokens/s", "peak memory")


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _budget_error(r: RunResult) -> str:
    return "-" if r.budget is None else f"{r.budget.relative_error:+.2%}"


def _steps(r: RunResult) -> str:
    if r.failure:
        return "failed"
    return f"{r.steps} (stopped early)" if r.stopped_early else str(r.steps)


def table_rows(results: list[RunResult]) -> list[list[str]]:
    return [[
        r.name, str(r.d_model), str(r.n_layers), _si(r.params), _budget_error(r), _si(r.flops_per_token),
        _si(r.training_flops), _steps(r), f"{r.lr:g}", _metric(r.final), _metric(r.best),
        _si(r.state_size), _si(r.tokens_per_s), _si(r.peak_memory_bytes, "B"),
    ] for r in results]


def notes(results: list[RunResult], metric: str) -> list[str]:
    """Lines for what the table cannot say: failed runs, early stops, the learning-rate sweep."""
    lines = []
    for r in results:
        if r.failure:
            lines.append(f"- **{r.name} failed** (lr {r.lr:g}): {r.failure}")
        elif r.stopped_early:
            lines.append(f"- {r.name} stopped early at step {r.steps}: {metric} reached train.stop_at")
        if len(r.sweep) > 1:
            points = ", ".join(f"lr {p.lr:g}: " + (f"failed ({p.failure.split(';')[0]})" if p.failure else
                                                   f"best {_metric(p.best)}, final {_metric(p.final)}")
                               for p in r.sweep)
            lines.append(f"- {r.name} learning-rate sweep: {points}")
    return lines


def markdown_table(results: list[RunResult]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + " --- |" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def text_table(results: list[RunResult]) -> str:
    """The table as aligned plain text, for a terminal."""
    rows = [list(TABLE_COLUMNS)] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def sweep_table(results: list[RunResult]) -> str | None:
    """Best metric per architecture (rows; two presets of one mixer are two rows) and sweep
    point x width (columns); ``None`` without a sweep."""
    if not any(r.data_point for r in results):
        return None
    columns = sorted({(r.seq_len, r.data_point, r.d_model) for r in results})
    architectures = list(dict.fromkeys(r.architecture for r in results))
    cell = {(r.architecture, r.data_point, r.d_model): r.best for r in results}
    head = ["architecture"] + [f"{point} d{width}" for _, point, width in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for architecture in architectures:
        row = [architecture] + [_metric(cell.get((architecture, point, width))) for _, point, width in columns]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def environment() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    # The load average says how busy the machine was while tokens/s were measured (other jobs slow them).
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"seqarch": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": load}


PLOT_FORMATS = ("png", "pdf", "svg")  # the PNG for the report, PDF and SVG for papers


def _save(fig, path: Path) -> None:
    for suffix in PLOT_FORMATS:
        fig.savefig(path.with_suffix(f".{suffix}"), dpi=120)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _chance_line(ax, chance: float | None) -> None:
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance ({chance:.3g})")


def plot_metric_vs_flops(results: list[RunResult], path: Path, metric: str, chance: float | None = None) -> None:
    """The metric against training FLOPs, a line per architecture; an early stop is marked by an x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        points = [(h["training_flops"], h[metric]) for h in r.history if metric in h and h["training_flops"] > 0]
        if points:
            xs, ys = zip(*points)
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=f"{r.name} ({_si(r.params)} params)")
            if r.stopped_early:
                ax.plot(xs[-1], ys[-1], marker="x", markersize=9, color=line.get_color(), linestyle="none")
    if any(r.stopped_early for r in results):
        ax.plot([], [], marker="x", color="black", linestyle="none", label="stopped early (stop_at reached)")
    if metric.endswith("accuracy"):
        _chance_line(ax, chance)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(metric.replace("/", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_accuracy_vs_state(results: list[RunResult], path: Path, chance: float | None = None) -> None:
    """Best accuracy against recurrent state size (log axis spanning at least a decade)."""
    from matplotlib.ticker import LogLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    shown = sorted((r for r in results if r.best is not None and r.state_size), key=lambda r: (r.state_size, r.best))
    for i, r in enumerate(shown):
        ax.scatter([r.state_size], [r.best], s=30)
        # Alternate the labels above and below their points, so neighbours do not print over each other.
        ax.annotate(f"{r.name} d={r.d_model}", (r.state_size, r.best), fontsize=7,
                    xytext=(4, 6 if i % 2 == 0 else -11), textcoords="offset points")
    _chance_line(ax, chance)
    ax.set_xscale("log")
    if shown:
        low, high = min(r.state_size for r in shown), max(r.state_size for r in shown)
        centre = (low * high) ** 0.5
        ax.set_xlim(min(low / 2, centre / 4), max(high * 2, centre * 4))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.set_xlabel("recurrent state size (numbers per sequence)")
    ax.set_ylabel("best validation accuracy")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    if chance is not None:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_report(folder: Path, config: RunConfig, bundle: DataBundle, results: list[RunResult], *,
                 command: str, wall_s: float, kind: str = "compare", resumes: list[dict] = ()) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the plots into ``folder``; returns their paths.

    The metric is the task's (``bundle.metric``); recall tasks (``bundle.recall``) also get the
    accuracy against state size plot.
    """
    folder.mkdir(parents=True, exist_ok=True)
    metric = bundle.metric.name
    data_info = bundle.info
    paths = {"json": folder / "results.json", "markdown": folder / "report.md",
             "metric_plot": folder / "metric_vs_flops.png"}
    # Chance accuracy: one of the classes, or one token of the vocabulary.
    chance = 1.0 / (bundle.num_classes or bundle.vocab_size) if (bundle.num_classes or bundle.vocab_size) else None
    plot_metric_vs_flops(results, paths["metric_plot"], metric, chance)
    if bundle.recall:
        paths["state_plot"] = folder / "accuracy_vs_state.png"
        plot_accuracy_vs_state(results, paths["state_plot"], chance)
    payload = {"command": command, "wall_s": wall_s, "environment": environment(), "config": config.to_dict(),
               "data": data_info, "metric": metric, "higher_is_better": bundle.metric.higher_is_better,
               "results": [r.to_dict() for r in results], "resumes": list(resumes)}
    write_atomic(paths["json"], json.dumps(payload, indent=2, default=str))
    budget = config.budget.model_dump(exclude_defaults=True)
    budget_text = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}" for k, v in budget.items())
    env = payload["environment"]
    compared = kind == "compare"
    title = (f"{metric} at a matched budget" if compared and budget_text else
             f"{metric}, every architecture at its own size" if compared else f"{metric} of one model")
    lines = [
        f"# {config.name}: {title}",
        "",
        f"- Command: `{command}`",
        f"- Data: {', '.join(f'{k}={v}' for k, v in data_info.items() if not isinstance(v, (list, dict)))}",
        *([f"- Budget: {budget_text or 'none (every architecture at the config size)'}"] if compared else []),
        (f"- Recipe: {config.train.steps} steps x batch {config.train.batch_size}, AdamW "
         f"(lr {config.train.lr}, wd {config.train.weight_decay}), warmup + cosine; seed {config.train.seed}"),
        f"- FLOPs: {describe_conventions(config.budget.attention_flops)}",
        *[f"- Learning rates of {r.name} (lr {r.lr:g}): "
          f"{describe_learning_rates(r.model_config, r.lr, config.train.weight_decay)}" for r in results],
        (f"- Machine: {env['device']}, torch {env['torch']}, {env['threads']} threads of {env['cpus']} CPUs"
         + (f", load average {env['load_average']:.1f}" if env["load_average"] is not None else "")
         + f"; wall time {wall_s:.0f} s"),
        *[f"- Resumed {entry['time']}" + (": changed " + ", ".join(
            f"{k} {v['was']!r} -> {v['now']!r}" for k, v in entry["changed"].items()) if entry["changed"] else "")
          for entry in resumes],
        "",
        markdown_table(results),
        "",
        *(lines_of_notes + [""] if (lines_of_notes := notes(results, metric)) else []),
        *([f"Best {metric} by sweep point and width:", "", sweep, ""] if (sweep := sweep_table(results)) else []),
        (f"`final`/`best`: {metric} at the last / best evaluation "
         f"({'higher' if bundle.metric.higher_is_better else 'lower'} is better). "
         "FLOPs/token: forward FLOPs per token of a training step; training FLOPs: forward and backward of every "
         "step trained (the FLOPs line says how they are counted). State size: numbers in "
         "the recurrent state per sequence at the training length (a KV cache for attention). "
         "Budget error: the model's size against the budget. tokens/s: measured by this process while it "
         "trained (a resumed run counts only its own steps), on a machine that may run other work at the same "
         "time: compare them within one report. Peak memory: CUDA allocator peak on GPUs; on CPUs the whole "
         "process's peak RSS (the Python runtime and libraries included, so it differs little between models)."),
        "",
        f"![{metric} against training FLOPs]({paths['metric_plot'].name})",
    ]
    if bundle.recall:
        lines += ["", f"![accuracy against state size]({paths['state_plot'].name})"]
    write_atomic(paths["markdown"], "\n".join(lines) + "\n")
    return paths
