"""``seqarch mad``: the MAD suite (Poli et al., 2024, arXiv 2403.17844) over every architecture.

Each task variant of the config's ``mad:`` section is one comparison (:mod:`.suite`): every
architecture trained on it with the config's recipe (a learning-rate list is a sweep; the best run is
kept). An architecture's MAD score per task is its best validation accuracy averaged over the task's
variants; its MAD score is the mean of those over tasks (MAD's ``compute_model_mad_scores``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.mad import mad_variants
from .config import DataSection, RunConfig
from .durable import write_atomic
from .report import environment, wall_time
from .suite import SuitePoint, results_payload, run_suite


def mad_points(config: RunConfig) -> tuple[list[SuitePoint], list[str]]:
    """The suite's comparisons, labelled ``task/variant``, and the labels of the variants
    ``mad.max_seq_len`` leaves out."""
    section = config.mad
    points, left_out = [], []
    for task in section.tasks:
        variants = mad_variants(task)
        for label, spec in variants[:1] if section.variants == "baseline" else variants:
            if section.num_test is not None:
                spec = {**spec, "num_test": section.num_test}
            if section.max_seq_len is not None and spec["seq_len"] > section.max_seq_len:
                left_out.append(f"{task}/{label}")
                continue
            point = config.model_copy(update={"data": DataSection.model_validate(spec)}, deep=True)
            points.append(SuitePoint(f"{task}/{label}", point))
    return points, left_out


def _accuracy(result) -> float:
    # A failed run counts what it reached before the failure, nothing when it reached nothing.
    return 0.0 if result.best is None else float(result.best)


def mad_scores(points: list[SuitePoint]) -> dict[str, dict[str, float]]:
    """``{architecture: {task: mean accuracy over its variants, ..., "mad": mean over tasks}}`` of the
    finished points (a task counts once any of its variants has finished)."""
    by_task: dict[str, dict[str, list[float]]] = {}
    for point in points:
        if not point.done:
            continue
        task = point.label.split("/", 1)[0]
        for result in point.results:
            by_task.setdefault(result.name, {}).setdefault(task, []).append(_accuracy(result))
    scores = {}
    for name, tasks in by_task.items():
        per_task = {task: sum(values) / len(values) for task, values in tasks.items()}
        scores[name] = {**per_task, "mad": sum(per_task.values()) / len(per_task)}
    return scores


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def write_mad_report(folder: Path, config: RunConfig, points: list[SuitePoint], *, left_out: list[str],
                     command: str, wall_s: float, resumed: bool = False) -> Path:
    """``mad.json`` (scores and every run) and ``report.md`` (scores per task, then every variant)."""
    scores = mad_scores(points)
    names = [a.name for a in config.architectures]
    tasks = list(dict.fromkeys(p.label.split("/", 1)[0] for p in points))
    payload = {"command": command, "wall_s": wall_s, "environment": environment(), "config": config.to_dict(),
               "scores": scores, "left_out": left_out, "points": results_payload(points)}
    write_atomic(folder / "mad.json", json.dumps(payload, indent=2, default=str))
    done = sum(p.done for p in points)
    fmt = lambda value: "-" if value is None else f"{value:.3f}"
    train = config.train
    lines = [
        f"# {config.name}: MAD scores",
        "",
        f"- Command: `{command}`",
        f"- Points: {done} of {len(points)} task variants trained" + (
            f"; left out by mad.max_seq_len={config.mad.max_seq_len}: {', '.join(left_out)}" if left_out else ""),
        (f"- Recipe: {train.steps} steps x batch {train.batch_size}, AdamW (lr {train.lr}, wd {train.weight_decay}), "
         f"warmup + cosine; seed {train.seed}; {wall_time(wall_s, resumed=resumed)}"),
        "",
        ("MAD score: best validation accuracy per variant (the best learning rate), averaged over each task's "
        "variants, then over tasks."),
        "",
        *_table(["architecture", "MAD score", *tasks],
                [[n, fmt(scores.get(n, {}).get("mad")), *(fmt(scores.get(n, {}).get(t)) for t in tasks)]
                 for n in names]),
        "",
        "Best validation accuracy per variant:",
        "",
    ]
    best = {(p.label, r.name): r for p in points if p.done for r in p.results}
    rows = []
    for point in points:
        cells = []
        for name in names:
            result = best.get((point.label, name))
            cells.append("-" if result is None else ("failed " if result.failure else "") + fmt(_accuracy(result)))
        rows.append([point.label, *cells])
    lines += _table(["task/variant", *names], rows)
    path = folder / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def run_mad(config: RunConfig, *, resume: bool = False, cache_dir: str | None = None, quiet: bool = False,
            command_line: str = "seqarch mad") -> tuple[list[SuitePoint], dict[str, dict[str, float]]]:
    """Train the suite and write its report; returns the points and :func:`mad_scores`."""
    started = time.time()
    points, left_out = mad_points(config)

    def report(points: list[SuitePoint]) -> None:
        write_mad_report(config.folder, config, points, left_out=left_out, command=command_line,
                         wall_s=time.time() - started, resumed=resume)

    run_suite(config, points, resume=resume, cache_dir=cache_dir, quiet=quiet, on_point=report, command="mad")
    return points, mad_scores(points)
