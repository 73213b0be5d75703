"""Many comparisons under one run folder: ``seqarch mad`` (one per task variant) and ``seqarch scale``
(one per FLOP budget) both run :func:`seqarch.training.compare.compare` once per point.

Everything is checked before the first step trains: the run folder (``--resume`` needs the config the
run saved), every data set, every budget and every run folder of every point. A resumed suite trains
only the runs that have not finished (a finished run keeps its ``result.json``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..data import DataBundle, build_data
from .compare import check_run_folders, compare, plan_comparison, planned_runs
from .config import RunConfig
from .result import RunResult
from .run import check_trainer_options
from .run_folder import check_run_folder, record_resume
from .session import save_config

log = logging.getLogger("seqarch")


@dataclass
class SuitePoint:
    """One comparison of a suite: its label (the folder under the run folder), config and results."""

    label: str
    config: RunConfig
    bundle: DataBundle | None = None
    results: list[RunResult] | None = None

    @property
    def done(self) -> bool:
        return self.results is not None


def run_suite(config: RunConfig, points: list[SuitePoint], *, resume: bool = False, cache_dir: str | None = None,
              quiet: bool = False, on_point: Callable[[list[SuitePoint]], None] | None = None,
              command: str = "compare") -> list[SuitePoint]:
    """Train every point's comparison into ``config.folder / label``; ``on_point(points)`` is called
    after each point (a report written then loses nothing to a kill); ``command`` (``mad``, ``scale``) is
recorded in the folder, and a resume of a folder another command made is refused. Returns the points,
results filled."""
    folder = config.folder
    for each in (config, *(point.config for point in points)):  # the points are copies made before this
        each.trainer.enable_progress_bar = not quiet
    changes = check_run_folder(folder, config, command, resume=resume)
    check_trainer_options(config.trainer)
    bundles: dict[str, DataBundle] = {}  # points that share a data spec share its data sets
    plans = []
    for point in points:
        key = json.dumps(point.config.data.spec(), sort_keys=True, default=str)
        if key not in bundles:
            bundles[key] = build_data(point.config.data.spec(), seed=point.config.train.seed, cache_dir=cache_dir)
        point.bundle = bundles[key]
        plans.append(plan_comparison(point.config, point.bundle))
    for point, plan in zip(points, plans):
        check_run_folders(point.config, point.bundle, folder / point.label, plan, resume=resume)
    save_config(config, folder, command)
    if resume:
        record_resume(folder, changes)
    counts = [len(planned_runs(point.config, plan, folder / point.label)) for point, plan in zip(points, plans)]
    for index, (point, plan) in enumerate(zip(points, plans)):
        log.info("point %d of %d: %s", index + 1, len(points), point.label)
        results = compare(point.config, point.bundle, folder / point.label, resume=resume, plan=plan,
                          first_index=sum(counts[:index]), total_runs=sum(counts))
        for result in results:
            result.data_point = point.label
            result.seq_len = point.bundle.seq_len
        point.results = results
        if on_point is not None:
            on_point(points)
    return points


def results_payload(points: list[SuitePoint]) -> list[dict]:
    """The finished points as plain data: label, data spec and every architecture's result."""
    return [{"label": p.label, "data": p.config.data.spec(), "results": [r.to_dict() for r in p.results]}
            for p in points if p.done]

