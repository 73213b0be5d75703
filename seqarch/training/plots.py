"""The report's plots, each written as PNG, PDF and SVG: the metric against training FLOPs, a line per
architecture (the Chinchilla/Zoology way of reading a comparison at matched compute); for recall tasks,
accuracy against recurrent state size (Zoology, figure 2: recall is bought with state); with
``data.test_lengths``, the test metric against sequence length (the Mamba paper's induction-heads
extrapolation). Each ``*_figure`` function builds the figure; ``plot_*`` writes and closes it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .result import RunResult, split_metric
from .stats import Interval, history_band, mean_interval, seed_interval


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def length_intervals(r: RunResult, lengths: list[int]) -> list[Interval | None]:
    """``r``'s test metric at each of ``lengths`` (``str`` keys of ``test_lengths``), mean ± 95% over seeds."""
    runs = [run for run in (r.seed_runs or [r]) if run.failure is None]
    values = [[run.test_lengths.get(str(length)) for run in runs] for length in lengths]
    return [mean_interval([v for v in column if v is not None]) if any(v is not None for v in column) else None
            for column in values]


PLOT_FORMATS = ("png", "pdf", "svg")  # the PNG for the report, PDF and SVG for papers


def _save(fig, path: Path, formats: tuple[str, ...] = PLOT_FORMATS) -> None:
    """Write ``fig`` as ``path`` in each of ``formats``; the other formats' files of ``path`` are removed,
    so none is left beside it older than the ones written."""
    for suffix in PLOT_FORMATS:
        final = path.with_suffix(f".{suffix}")
        if suffix not in formats:
            final.unlink(missing_ok=True)
            continue
        # Written beside and renamed into place: a comparison killed mid-write keeps the previous plot.
        partial = final.with_name(final.name + ".partial")
        fig.savefig(partial, dpi=120, format=suffix)
        os.replace(partial, final)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _chance_line(ax, chance: float | None) -> None:
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance ({chance:.3g})")


def plot_metric_vs_flops(results: list[RunResult], path: Path, metric: str, chance: float | None = None, *,
                         formats: tuple[str, ...] = PLOT_FORMATS) -> None:
    """The metric against training FLOPs, a line per architecture; an early stop is marked by an x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        band = [(x, interval) for x, interval in history_band(r, metric) if x > 0]
        if band:
            xs = [x for x, _ in band]
            ys = [interval.mean for _, interval in band]
            errors = [interval.half_width or 0.0 for _, interval in band]
            seeds = f", mean ± 95% over {band[0][1].n} seeds" if band[0][1].n > 1 else ""
            (line, *_) = ax.errorbar(xs, ys, yerr=errors if seeds else None, marker="o", markersize=3, capsize=2,
                                     label=f"{r.name} ({_si(r.params)} params{seeds})")
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
    _save(fig, path, formats)
    plt.close(fig)


# Where a point's label may go, tried in turn (offset in points, horizontal alignment): beside the point,
# then above or below it, then further out; the first that covers no other label or marker and stays inside
# the axes is kept (else the one that covers least).
LABEL_PLACES = ((7, 3, "left"), (7, -10, "left"), (-7, 3, "right"), (-7, -10, "right"), (0, 9, "center"),
                (0, -17, "center"), (7, 15, "left"), (7, -22, "left"), (-7, 15, "right"), (-7, -22, "right"))


def place_labels(ax, points: list[tuple[float, float, str]], *, fontsize: float = 7, marker_size: float = 5) -> list:
    """Annotate each ``(x, y, text)`` of ``ax`` where the label clears the markers, the labels placed before
    it and the axes' edges (so no label runs onto the tick labels); returns the annotations."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    radius = marker_size / 2 * fig.dpi / 72 + 1
    centres = ax.transData.transform([(x, y) for x, y, _ in points]) if points else []
    taken = [Bbox.from_bounds(cx - radius, cy - radius, 2 * radius, 2 * radius) for cx, cy in centres]
    annotations = []
    for x, y, text in points:
        best = None
        for dx, dy, align in LABEL_PLACES:
            annotation = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                     ha=align)
            box = annotation.get_window_extent(renderer)
            outside = box.x0 < inside.x0 or box.x1 > inside.x1 or box.y0 < inside.y0 or box.y1 > inside.y1
            cost = sum(box.overlaps(other) for other in taken) + 100 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, annotation, box)
            else:
                annotation.remove()
            if cost == 0:
                break
        taken.append(best[2])
        annotations.append(best[1])
    return annotations


def accuracy_vs_state_figure(results: list[RunResult], chance: float | None = None):
    """Test accuracy (best validation accuracy where no test was run) against recurrent state size, with
    95% error bars over seeds (log axis spanning at least a decade); an early stop is marked by an x."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    on_test = all(r.test is not None for r in results if r.state_size and r.best is not None)
    attribute = "test" if on_test else "best"
    points = [(r, seed_interval(r, attribute)) for r in results if r.state_size]
    shown = sorted(((r, i) for r, i in points if i is not None), key=lambda p: (p[0].state_size, p[1].mean))
    for r, interval in shown:
        (line, *_) = ax.errorbar([r.state_size], [interval.mean],
                                 yerr=[interval.half_width] if interval.half_width else None,
                                 marker="o", markersize=5, capsize=3, linestyle="none")
        if r.stopped_early:
            ax.plot([r.state_size], [interval.mean], marker="x", markersize=9, color=line.get_color(),
                    linestyle="none")
    if any(r.stopped_early for r, _ in shown):
        ax.plot([], [], marker="x", color="black", linestyle="none", label="stopped early (stop_at reached)")
    _chance_line(ax, chance)
    ax.set_xscale("log")
    if shown:
        low, high = min(r.state_size for r, _ in shown), max(r.state_size for r, _ in shown)
        centre = (low * high) ** 0.5
        ax.set_xlim(min(low / 2, centre / 4), max(high * 2, centre * 4))
    span = math.log10(ax.get_xlim()[1] / ax.get_xlim()[0])
    # Labelled ticks at 1, 2 and 5 only over a short axis (wider, they would run together); never the minor ones.
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span <= 2 else (1.0,)))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(math.inf, math.inf)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("recurrent state size (numbers per sequence)")
    ax.set_ylabel("test accuracy" if on_test else "best validation accuracy")
    ax.set_ylim(-0.08, 1.1)  # room for a label below a point at accuracy 0 and above one at 1
    ax.grid(alpha=0.3)
    if chance is not None or any(r.stopped_early for r, _ in shown):
        # Above the axes, where it covers no point or label.
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)
    fig.tight_layout()  # before the labels are placed: it moves the axes
    place_labels(ax, [(r.state_size, interval.mean, f"{r.name} d={r.d_model}") for r, interval in shown])
    return fig


def plot_accuracy_vs_state(results: list[RunResult], path: Path, chance: float | None = None, *,
                           formats: tuple[str, ...] = PLOT_FORMATS) -> None:
    """:func:`accuracy_vs_state_figure`, written to ``path`` (PNG, PDF, SVG)."""
    plt = _pyplot()
    fig = accuracy_vs_state_figure(results, chance)
    _save(fig, path, formats)
    plt.close(fig)


def plot_length_generalisation(results: list[RunResult], path: Path, metric: str, seq_len: int,
                               lengths: list[int], chance: float | None = None, *,
                               formats: tuple[str, ...] = PLOT_FORMATS) -> None:
    """The test metric against sequence length (log2 axis; the training length marked), a line per
    architecture, with 95% error bars over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [seq_len, *lengths]
    for r in results:
        intervals = [seed_interval(r, "test"), *length_intervals(r, lengths)]
        points = sorted(((x, i) for x, i in zip(xs, intervals) if i is not None), key=lambda point: point[0])
        if not points:
            continue
        seeds = max(i.n for _, i in points)
        ax.errorbar([x for x, _ in points], [i.mean for _, i in points],
                    yerr=[i.half_width or 0.0 for _, i in points] if seeds > 1 else None, marker="o", markersize=4,
                    capsize=2, label=f"{r.name}" + (f" (mean ± 95% over {seeds} seeds)" if seeds > 1 else ""))
    ax.axvline(seq_len, color="grey", linestyle="--", linewidth=1, label=f"training length {seq_len}")
    if metric.endswith("accuracy"):
        _chance_line(ax, chance)
        ax.set_ylim(-0.02, 1.05)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(xs), [str(x) for x in sorted(xs)])
    ax.set_xlabel("test sequence length")
    ax.set_ylabel(split_metric(metric, "test").replace("/", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, formats)
    plt.close(fig)


