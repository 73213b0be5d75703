"""What ``seqarch train`` and ``seqarch compare`` do once the config is valid."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml
from lightning.pytorch.utilities import rank_zero_only

from ..data import build_data
from .compare import check_run_folders, compare, plan_comparison, planned_runs
from .config import SAVED_CONFIG, RunConfig, saved_imports, sweep_points
from .durable import write_atomic
from .errors import NonFiniteLossError
from .module import run_fingerprint
from .report import text_table, write_report
from .result import RunResult
from .run import check_trainer_options, model_config_for, prepare_run_folder, train_run
from .run_folder import check_run_folder, read_resumes, record_command, record_resume

log = logging.getLogger("seqarch")


def save_config(config: RunConfig, folder: Path, command: str) -> None:
    """Write the resolved config into the run folder (``--resume`` reads it back: its imports, and
    the model and recipe a resume must keep), and the ``command`` that made the folder.

    The imports an earlier config saved there are kept: a run started without ``--import`` in a
    folder it then refuses to train over must not make a later ``--resume`` forget them.
    """
    values = config.to_dict()
    values["imports"] = list(dict.fromkeys(saved_imports(folder) + config.imports))
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / SAVED_CONFIG, yaml.safe_dump(values, sort_keys=False))
    record_command(folder, command)


def run_command(command: str, config: RunConfig, *, resume: bool = False, cache_dir: str | None = None,
                quiet: bool = False, command_line: str = "", started: float | None = None) -> int:
    """Run ``train`` or ``compare``; returns the process exit code (1 when a run failed on a NaN)."""
    started = time.time() if started is None else started
    folder = config.folder_for(command)
    # The folder first: nothing is built, trained or written before it is known to be ours.
    config.trainer.enable_progress_bar = not quiet
    changes = check_run_folder(folder, config, command, resume=resume)
    check_trainer_options(config.trainer)
    if command == "train" and config.budget.is_set:
        log.info("seqarch train: the budget section is for compare; training the model section at its own size")
    seed = config.train.seed
    points = sweep_points(config) if command == "compare" else [("", config)]
    # Every data set is built and every budget solved before the first step trains.
    bundles = [build_data(point.data.spec(), seed=seed, cache_dir=cache_dir) for _, point in points]
    plans = [plan_comparison(point, bundle) for (_, point), bundle in zip(points, bundles)] \
        if command == "compare" else []
    point_folders = [folder / label if label else folder for label, _ in points]
    for (_, point), bundle, plan, point_folder in zip(points, bundles, plans, point_folders):
        check_run_folders(point, bundle, point_folder, plan, resume=resume)
    if command == "train":
        model_config = model_config_for(config, bundle := bundles[0])
        prepare_run_folder(folder, resume, run_fingerprint(model_config, bundle.kind, config.train,
                                                           config.train.learning_rates[0], bundle.seq_len))
    if rank_zero_only.rank == 0:
        save_config(config, folder, command)
        if resume:
            record_resume(folder, changes)
    results: list[RunResult] = []

    def report() -> None:
        if rank_zero_only.rank == 0:
            paths = write_report(folder, config, bundles[0], results, command=command_line or f"seqarch {command}",
                                 wall_s=time.time() - started, kind=command, resumes=read_resumes(folder))
            log.info("report: %s", paths["markdown"])

    def announce(best: RunResult, finished: list[RunResult]) -> None:
        if rank_zero_only.rank == 0:
            value = "-" if best.best is None else f"{best.best:.4f}"
            status = f"FAILED: {best.failure}" if best.failure else f"{best.metric} {value}"
            log.info("\n%s finished (%s); results so far:\n%s\n", best.name, status, text_table(results + finished))

    def rewrite_report(so_far: list[RunResult]) -> None:
        if rank_zero_only.rank == 0:  # the report after every run (atomically), so a kill loses no finished run
            # The plots as PNG only (the report's own; PDF and SVG come with the final report): drawing
            # every format after every run took most of a short comparison's time.
            write_report(folder, config, bundles[0], results + so_far, command=command_line or f"seqarch {command}",
                         wall_s=time.time() - started, kind=command, resumes=read_resumes(folder),
                         plot_formats=("png",))

    if command == "compare":
        counts = [len(planned_runs(point, plan, point_folder))
                  for (_, point), plan, point_folder in zip(points, plans, point_folders)]
        for i, ((label, point), bundle, plan, point_folder) in enumerate(zip(points, bundles, plans, point_folders)):
            def label_and_report(so_far: list[RunResult], label: str = label, seq_len: int = bundle.seq_len) -> None:
                for result in so_far:
                    result.data_point, result.seq_len = label, seq_len
                rewrite_report(so_far)

            point_results = compare(point, bundle, point_folder, resume=resume, on_result=announce, plan=plan,
                                    on_run=label_and_report, first_index=sum(counts[:i]), total_runs=sum(counts))
            for result in point_results:
                result.data_point = label
                result.seq_len = bundle.seq_len
            results += point_results
    else:
        try:
            # A learning-rate list is a sweep for compare; train trains its first value.
            result = train_run(config, bundle, model_config, lr=config.train.learning_rates[0], folder=folder,
                               resume=resume, label=str(model_config.mixer))
        except NonFiniteLossError as error:
            log.error("seqarch %s: %s", command, error)
            return 1
        results = [result]
        announce(result, [])
    report()
    return 1 if any(r.failure for r in results) else 0
