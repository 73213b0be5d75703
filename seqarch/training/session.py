"""What ``seqarch train`` and ``seqarch compare`` do once the config is valid."""

from __future__ import annotations

import logging
import time

import yaml
from lightning.pytorch.utilities import rank_zero_only

from ..data import build_data
from .compare import compare, plan_comparison
from .config import SAVED_CONFIG, RunConfig, saved_imports, sweep_points
from .module import NonFiniteLossError
from .report import text_table, write_report
from .result import RunResult
from .run import model_config_for, train_run

log = logging.getLogger("seqarch")


def save_config(config: RunConfig) -> None:
    """Write the resolved config into the run folder (``--resume`` reads its ``imports`` back).

    The imports an earlier config saved there are kept: a run started without ``--import`` in a
    folder it then refuses to train over must not make a later ``--resume`` forget them.
    """
    values = config.to_dict()
    values["imports"] = list(dict.fromkeys(saved_imports(config.folder) + config.imports))
    config.folder.mkdir(parents=True, exist_ok=True)
    (config.folder / SAVED_CONFIG).write_text(yaml.safe_dump(values, sort_keys=False))


def run_command(command: str, config: RunConfig, *, resume: bool = False, cache_dir: str | None = None,
                quiet: bool = False, command_line: str = "", started: float | None = None) -> int:
    """Run ``train`` or ``compare``; returns the process exit code."""
    started = time.time() if started is None else started
    folder = config.folder
    config.trainer.enable_progress_bar = not quiet
    seed = config.train.seed
    points = sweep_points(config) if command == "compare" else [("", config)]
    # Every data set is built and every budget solved before the first step trains.
    bundles = [build_data(point.data.spec(), seed=seed, cache_dir=cache_dir) for _, point in points]
    plans = [plan_comparison(point, bundle) for (_, point), bundle in zip(points, bundles)] \
        if command == "compare" else []
    if rank_zero_only.rank == 0:
        save_config(config)

    def announce(best: RunResult, finished: list[RunResult]) -> None:
        if rank_zero_only.rank == 0:
            log.info("\n%s finished (%s %s); results so far:\n%s\n", best.name, best.metric,
                     "-" if best.best is None else f"{best.best:.4f}", text_table(finished))

    try:
        if command == "compare":
            results = []
            for (label, point), bundle, plan in zip(points, bundles, plans):
                point_results = compare(point, bundle, folder / label if label else folder, resume=resume,
                                        on_result=announce, plan=plan)
                for result in point_results:
                    result.data_point = label
                    result.seq_len = bundle.seq_len
                results += point_results
        else:
            bundle = bundles[0]
            model_config = model_config_for(config, bundle)
            # A learning-rate list is a sweep for compare; train trains its first value.
            result = train_run(config, bundle, model_config, lr=config.train.learning_rates[0], folder=folder,
                               resume=resume, label=str(model_config.mixer))
            results = [result]
            announce(result, results)
    except NonFiniteLossError as error:
        log.error("seqarch %s: %s", command, error)
        return 1
    if rank_zero_only.rank == 0:
        paths = write_report(folder, config, bundles[0], results, command=command_line or f"seqarch {command}",
                             wall_s=time.time() - started)
        log.info("report: %s", paths["markdown"])
    return 0
