"""``seqarch scale``: every architecture at a geometric grid of training-FLOP budgets, and a power law
``loss(C) = a C^-b + e`` (:mod:`seqarch.scaling`) fitted to each architecture's points.

Each budget is one comparison (:mod:`.suite`) with ``budget.flops`` set to it, so every model is resized
by the comparison's own budget matching; the run length (steps x batch x length) is the config's, the
same at every budget. A point is the run's achieved training FLOPs and its final validation loss. The
report gives each exponent with its 95% Jacobian-based interval and the budgets where each curve crosses
the reference architecture's (the Transformer by default), within the range both measured.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..scaling import PowerLawFit, crossings, fit_power_law
from .config import RunConfig
from .durable import write_atomic
from .errors import ConfigError
from .plots import _pyplot, _save, _si
from .report import environment, wall_time
from .suite import SuitePoint, results_payload, run_suite


def reference_name(config: RunConfig) -> str:
    """The architecture the others' curves are crossed with: ``scale.reference``, else transformer, else the first."""
    names = [a.name for a in config.architectures]
    reference = config.scale.reference
    if reference is not None and reference not in names:
        raise ConfigError(f"scale.reference: expected one of the architectures ({', '.join(names)}), got {reference!r}")
    return reference or ("transformer" if "transformer" in names else names[0])


def scale_points(config: RunConfig) -> list[SuitePoint]:
    """One comparison per budget of ``scale``, labelled ``flops-<budget>``."""
    if not config.scale.is_set:
        raise ConfigError("scale: expected a grid (flops: [...], or flops_min, flops_max and points), got none")
    if config.budget.params is not None:
        raise ConfigError(f"budget.params: seqarch scale sets a FLOP budget per point; expected none, got "
                          f"{config.budget.params:g}")
    # Only the FLOP target changes per point: the config's other budget options (width step, what counts as
    # parameters, attention's FLOP convention, width or depth) hold at every budget.
    return [SuitePoint(f"flops-{flops:.4g}", config.model_copy(
        update={"budget": config.budget.model_copy(update={"flops": flops})}, deep=True))
        for flops in config.scale.grid]


def final_loss(result) -> float | None:
    """The last validation loss of a run (``None`` for a failed run or one never validated)."""
    if result.failure:
        return None
    losses = [h["val/loss"] for h in result.history if "val/loss" in h and math.isfinite(h["val/loss"])]
    return losses[-1] if losses else None


def measured(points: list[SuitePoint]) -> dict[str, list[tuple[float, float]]]:
    """``{architecture: [(training FLOPs, final validation loss), ...]}`` of the finished points, by FLOPs."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for point in points:
        for result in point.results or []:
            loss = final_loss(result)
            if loss is not None and result.training_flops > 0:
                curves.setdefault(result.name, []).append((result.training_flops, loss))
    return {name: sorted(values) for name, values in curves.items()}


def fit_curves(curves: dict[str, list[tuple[float, float]]]) -> dict[str, PowerLawFit | None]:
    """A fit per architecture with at least three points at two or more computes; ``None`` otherwise."""
    fits = {}
    for name, values in curves.items():
        try:
            fits[name] = fit_power_law([c for c, _ in values], [y for _, y in values])
        except ValueError:
            fits[name] = None
    return fits


def crossing_text(name: str, reference: str, curves, fits) -> str:
    """Where ``name``'s fitted curve crosses ``reference``'s, within the compute range both measured."""
    if name == reference:
        return "(reference)"
    if fits.get(name) is None or fits.get(reference) is None:
        return "no fit"
    low = max(curves[name][0][0], curves[reference][0][0])
    high = min(curves[name][-1][0], curves[reference][-1][0])
    found = crossings(fits[name], fits[reference], low, high)
    if not found:
        return f"no crossing in the measured range ({_si(low)} - {_si(high)} FLOPs)"
    return ", ".join(f"{_si(c)} FLOPs" for c in found)


def plot_scaling(curves, fits, path: Path) -> None:
    """Measured points and fitted curves, loss against training FLOPs on log axes."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in curves.items():
        xs, ys = zip(*values)
        (marks,) = ax.plot(xs, ys, marker="o", linestyle="none", label=name)
        fit = fits.get(name)
        if fit is not None:
            grid = [xs[0] * (xs[-1] / xs[0]) ** (i / 100) for i in range(101)]
            ax.plot(grid, [fit(c) for c in grid], color=marks.get_color(), linewidth=1,
                    label=f"{name} fit: b = {fit.b:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Losses span less than a decade: plain numbers on the loss axis, not 2.3 x 10^0.
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)  # clear of the points
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_scale_report(folder: Path, config: RunConfig, points: list[SuitePoint], *, command: str,
                       wall_s: float, resumed: bool = False) -> Path:
    """``scale.json``, ``scale.md`` and ``loss_vs_flops.png`` from the finished points."""
    curves = measured(points)
    fits = fit_curves(curves)
    reference = reference_name(config)
    names = [a.name for a in config.architectures]
    cross = {name: crossing_text(name, reference, curves, fits) for name in names if name in curves}
    plot = folder / "loss_vs_flops.png"
    if curves:
        plot_scaling(curves, fits, plot)
    payload = {"command": command, "wall_s": wall_s, "environment": environment(), "config": config.to_dict(),
               "reference": reference, "curves": curves, "crossings": cross,
               "fits": {n: (f.to_dict() if f else None) for n, f in fits.items()}, "points": results_payload(points)}
    write_atomic(folder / "scale.json", json.dumps(payload, indent=2, default=str))
    train = config.train
    lines = [
        f"# {config.name}: loss against training FLOPs",
        "",
        f"- Command: `{command}`",
        (f"- Budgets: {', '.join(_si(c) for c in config.scale.grid)} training FLOPs "
         f"({sum(p.done for p in points)} of {len(points)} trained); every model resized to each by "
         f"{config.budget.match_by}"),
        (f"- Recipe: {train.steps} steps x batch {train.batch_size} at every budget; lr {train.lr}; "
        f"seed {train.seed}; {wall_time(wall_s, resumed=resumed)}"),
        "",
        "| architecture | points | a | b | b, 95% interval | e | rms residual | crosses " + reference + " at |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        fit = fits.get(name)
        count = len(curves.get(name, []))
        if fit is None:
            lines.append(f"| {name} | {count} | - | - | - | - | - | {cross.get(name, 'no points')} |")
            continue
        interval = (f"[{fit.b_interval[0]:.3g}, {fit.b_interval[1]:.3g}]" if fit.b_interval else
                    "n/a (b at the search bound: no power law)" if fit.at_bound else
                    "n/a (a constant fits best)" if fit.a == 0 else "n/a (no more points than parameters)")
        lines.append(f"| {name} | {count} | {fit.a:.4g} | {fit.b:.4g} | {interval} | {fit.e:.4g} | "
                     f"{fit.rms_residual:.3g} | {cross[name]} |")
    lines += [
        "",
        ("Fit: least squares of loss(C) = a C^-b + e (e >= 0) over each architecture's points, C its achieved "
        "training FLOPs. Interval: Jacobian-based (delta method) with Student's t at n - k degrees of freedom "
        "(k = 3 free parameters, 2 when e sits at 0). Crossings: where the fitted curves are equal, within the "
        "FLOP range both architectures measured."),
        "",
        "| budget | architecture | d_model | params | training FLOPs | final val loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for point in points:
        for result in point.results or []:
            loss = final_loss(result)
            lines.append(f"| {point.label} | {result.name} | {result.d_model} | {_si(result.params)} | "
                         f"{_si(result.training_flops)} | {'failed' if loss is None else f'{loss:.4f}'} |")
    if curves:
        lines += ["", f"![loss against training FLOPs]({plot.name})"]
    path = folder / "scale.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def run_scale(config: RunConfig, *, resume: bool = False, cache_dir: str | None = None, quiet: bool = False,
              command_line: str = "seqarch scale") -> tuple[list[SuitePoint], dict[str, PowerLawFit | None]]:
    """Train the grid and write its report; returns the points and the fits."""
    started = time.time()
    points = scale_points(config)
    reference_name(config)

    def report(points: list[SuitePoint]) -> None:
        write_scale_report(config.folder, config, points, command=command_line, wall_s=time.time() - started,
                           resumed=resume)

    run_suite(config, points, resume=resume, cache_dir=cache_dir, quiet=quiet, on_point=report, command="scale")
    return points, fit_curves(measured(points))
