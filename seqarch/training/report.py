"""Comparison reports: ``results.json``, ``report.md`` and the plots of :mod:`.plots`."""

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
from .plots import (
    PLOT_FORMATS,
    _si,
    length_intervals,
    plot_accuracy_vs_state,
    plot_length_generalisation,
    plot_metric_vs_flops,
)
from .result import RunResult, split_metric
from .stats import MEMORISATION_GAP, memorisation_gap, seed_interval

TABLE_COLUMNS = ("architecture", "d_model", "layers", "params", "budget error", "FLOPs/token", "training FLOPs",
                 "steps", "lr", "seeds", "train", "final", "best", "test", "state size", "tokens/s", "load",
                 "peak memory")


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _budget_error(r: RunResult) -> str:
    return "-" if r.budget is None else f"{r.budget.relative_error:+.2%}"


def _memory(r: RunResult) -> str:
    """The allocator's peak on GPUs; on CPUs what training needed over the process's resident set when it
    began (a result written before that was recorded: the whole process's peak, marked)."""
    if r.device.startswith("cuda") or r.peak_memory_bytes is None:
        return _si(r.peak_memory_bytes, "B")
    if r.training_memory_bytes is None:
        return _si(r.peak_memory_bytes, "B") + " (process)"
    return _si(r.training_memory_bytes, "B")


def _steps(r: RunResult) -> str:
    if r.failure:
        return "failed"
    return f"{r.steps} (stopped early)" if r.stopped_early else str(r.steps)


def _over_seeds(r: RunResult, attribute: str) -> str:
    """The value, or ``mean ± 95% half-width`` over the seeds."""
    interval = seed_interval(r, attribute)
    return "-" if interval is None else str(interval)


def _seeds(r: RunResult) -> str:
    runs = r.seed_runs or [r]
    ok = [run for run in runs if run.failure is None]
    return str(len(runs)) if len(ok) == len(runs) else f"{len(ok)} of {len(runs)}"


def table_rows(results: list[RunResult]) -> list[list[str]]:
    return [[
        r.name, str(r.d_model), str(r.n_layers), _si(r.params), _budget_error(r), _si(r.flops_per_token),
        _si(r.training_flops), _steps(r), f"{r.lr:g}", _seeds(r), _over_seeds(r, "train_final"),
        _over_seeds(r, "final"), _over_seeds(r, "best"), _over_seeds(r, "test"),
        _si(r.state_size), _si(r.tokens_per_s),
        "-" if r.load_average is None else f"{r.load_average:.1f}", _memory(r),
    ] for r in results]


def notes(results: list[RunResult], metric: str) -> list[str]:
    """Lines for what the table cannot say: memorisation, failed runs, early stops, the learning-rate sweep."""
    lines = []
    for r in results:
        gap = memorisation_gap(r) if r.higher_is_better else None
        if gap is not None and gap > MEMORISATION_GAP:
            lines.append(f"- **{r.name} memorised its training examples**: {metric.split('/')[-1]} "
                         f"{r.train_final:.4f} on examples it trained on against {r.final:.4f} on validation (gap "
                         f"{gap:.4f} > {MEMORISATION_GAP}); its validation and test numbers, not the training ones, "
                         "say what it learnt")
        failed_seeds = [run.seed for run in r.seed_runs if run.failure] if not r.failure else []
        if failed_seeds:
            lines.append(f"- {r.name}: seeds {failed_seeds} failed (a NaN loss); the intervals are over the others")
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


def length_table(results: list[RunResult], seq_len: int, lengths: list[int]) -> str | None:
    """Architecture x test length (the training length's ``test`` first); ``None`` without test lengths."""
    if not lengths:
        return None
    head = ["architecture", f"{seq_len} (trained)", *map(str, lengths)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        cells = [_over_seeds(r, "test"), *("-" if i is None else str(i) for i in length_intervals(r, lengths))]
        lines.append("| " + " | ".join([r.name, *cells]) + " |")
    return "\n".join(lines)


def environment() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    # The load average when the report was written; each run's own (RunResult.load_average) is in its row.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"seqarch": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": load}


def wall_time(wall_s: float, *, resumed: bool) -> str:
    """The report's wall time: this process's, which after a resume leaves out the processes before it."""
    return f"wall time {wall_s:.0f} s" + (" in this process, since the last resume" if resumed else "")


def recipe_lines(config: RunConfig, bundle: DataBundle) -> list[str]:
    """What the reader must know to trust the numbers: fresh or repeated training data, how much each
    evaluation reads, what chose the learning rate and what the result is measured on."""
    train = config.train
    tokens = f"{train.steps * train.batch_size} training examples"
    if bundle.fresh_train:
        data = f"- Training data: fresh examples every step ({tokens}, none repeated)"
    else:
        size = len(bundle.train)
        data = (f"- Training data: a finite set of {size} examples read {train.steps * train.batch_size / size:.1f} "
                f"times ({tokens}); a model can memorise it (flagged below when train - validation > "
                f"{MEMORISATION_GAP})")
    val = len(bundle.val)
    read = val if train.eval_batches is None else min(val, train.eval_batches * train.batch_size)
    test = bundle.test if bundle.test is not None else bundle.val
    lines = [data, (f"- Evaluation: every {train.eval_every} steps on {read} of the {val} validation examples "
                    f"(train.eval_batches = {train.eval_batches}) and as many training examples; "
                    f"once at the end on all {len(test)} {'test' if bundle.test is not None else 'validation'} "
                    "examples (the `test` column)"
                    + (f", and on {len(next(iter(bundle.length_tests.values())))} held-out examples at each "
                       f"of the lengths {', '.join(map(str, bundle.length_tests))} (the length generalisation table)"
                       if bundle.length_tests else ""))]
    if len(train.learning_rates) > 1:
        lines.append("- Learning rate: chosen per architecture on validation (the best mean final "
                     f"{bundle.metric.name} over seeds); the test split never chooses")
    return lines


def write_report(folder: Path, config: RunConfig, bundle: DataBundle, results: list[RunResult], *,
                 command: str, wall_s: float, kind: str = "compare", resumes: list[dict] = (),
                 plot_formats: tuple[str, ...] = PLOT_FORMATS) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the plots (in ``plot_formats``) into ``folder``; returns
    their paths.

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
    plot_metric_vs_flops(results, paths["metric_plot"], metric, chance, formats=plot_formats)
    if bundle.recall:
        paths["state_plot"] = folder / "accuracy_vs_state.png"
        plot_accuracy_vs_state(results, paths["state_plot"], chance, formats=plot_formats)
    lengths = list(bundle.length_tests)
    if lengths:
        paths["length_plot"] = folder / "length_generalisation.png"
        plot_length_generalisation(results, paths["length_plot"], metric, bundle.seq_len, lengths, chance,
                                   formats=plot_formats)
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
         f"(lr {config.train.lr}, wd {config.train.weight_decay}), warmup + cosine; "
         + (f"seeds {config.train.seeds}" if config.train.seeds else f"seed {config.train.seed}")),
        *recipe_lines(config, bundle),
        f"- FLOPs: {describe_conventions(config.budget.attention_flops)}",
        *[f"- Learning rates of {r.name} (lr {r.lr:g}): "
          f"{describe_learning_rates(r.model_config, r.lr, config.train.weight_decay)}" for r in results],
        (f"- Machine: {env['device']}, torch {env['torch']}, {env['threads']} threads of {env['cpus']} CPUs"
         + f"; {wall_time(wall_s, resumed=bool(resumes))}"
         + (f" (the run's own, across its processes: {results[0].wall_s:.0f} s)"
            if resumes and len(results) == 1 else "")),
        *[f"- Resumed {entry['time']}" + (": changed " + ", ".join(
            f"{k} {v['was']!r} -> {v['now']!r}" for k, v in entry["changed"].items()) if entry["changed"] else "")
          for entry in resumes],
        "",
        markdown_table(results),
        "",
        *(lines_of_notes + [""] if (lines_of_notes := notes(results, metric)) else []),
        *([f"Best {metric} by sweep point and width:", "", sweep, ""] if (sweep := sweep_table(results)) else []),
        *([(f"Length generalisation: {split_metric(metric, 'test')} of the final model, trained at length "
            f"{bundle.seq_len}, on a test set of {bundle.info.get('num_test', '-')} examples at each length "
            "(mean ± 95% Student-t half-width over seeds):"), "", table, "",
           f"![test metric against sequence length]({paths['length_plot'].name})", ""]
          if (table := length_table(results, bundle.seq_len, lengths)) else []),
        (f"`final`/`best`: {metric} at the last / best evaluation; `test`: "
         f"{split_metric(metric, 'test')} of the final model; `train`: the same metric on examples the run "
         f"trained on, at the last evaluation "
         f"({'higher' if bundle.metric.higher_is_better else 'lower'} is better). With several seeds each is "
         "mean ± the 95% Student-t half-width over the seeds (`seeds`: how many finished). "
         "FLOPs/token: forward FLOPs per token of a training step; training FLOPs: forward and backward of every "
         "step trained (the FLOPs line says how they are counted). State size: numbers in "
         "the recurrent state per sequence at the training length (a KV cache for attention). "
         "Budget error: the model's size against the budget. tokens/s: measured by this process while it "
         "trained (a resumed run counts only its own steps), on a machine that may run other work at the same "
         f"time: `load` is the machine's 1-minute load average while that run trained ({env['cpus']} CPUs); "
         "compare tokens/s within one report, between runs at a like load. Peak memory: the CUDA allocator's "
         "peak on GPUs; on CPUs the peak resident set over what the process held when training began "
         "(activations, gradients, optimizer state and data loading; the weights, built before, are not in it; "
         "results.json keeps the whole process's peak as peak_memory_bytes)."),
        "",
        f"![{metric} against training FLOPs]({paths['metric_plot'].name})",
    ]
    if bundle.recall:
        lines += ["", f"![accuracy against state size]({paths['state_plot'].name})"]
    write_atomic(paths["markdown"], "\n".join(lines) + "\n")
    return paths
