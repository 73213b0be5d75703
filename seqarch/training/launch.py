"""``seqarch compare CONFIG --launcher slurm|local``: one job per (architecture, learning rate, seed).

Each job is the same Lightning run as ``seqarch compare`` trains in-process (``train_run``, multi-GPU or
multi-node inside it through the config's ``trainer:``), always started with ``resume``, so a job that
is preempted or times out is requeued by submitit (``Checkpointable``) and continues from its own
checkpoints. ``--launcher local`` runs the same jobs as local subprocesses (submitit's local executor);
``slurm`` submits them with ``sbatch``. ``seqarch compare --collect RUN_FOLDER`` (or the same launch
command again, which submits only unfinished jobs) gathers every finished job's ``result.json`` into the
run folder's report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import SAVED_CONFIG, RunConfig, parse_yaml, validate
from .result import BudgetResult, RunResult

log = logging.getLogger("seqarch")

LAUNCHERS = ("local", "slurm")
JOBS_FILE = "jobs.json"


@dataclass
class JobSpec:
    """One job: the resolved config (plain data), which architecture, learning rate and seed, where."""

    config: dict[str, Any]
    architecture: int
    name: str
    lr: float
    seed: int
    folder: str
    cache_dir: str | None = None
    imports: list[str] = field(default_factory=list)


@dataclass
class SlurmOptions:
    """Scheduler options from the command line (``trainer``'s devices and nodes give tasks per node and
    nodes); ``extra``: further submitit SLURM parameters by their submitit names."""

    partition: str | None = None
    gpus_per_node: int | None = None
    time_min: int = 60
    account: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def job_specs(config: RunConfig, seeds: list[int], *, cache_dir: str | None = None) -> list[JobSpec]:
    """Every (architecture, learning rate, seed) of ``config``'s comparison, with its run folder."""
    if config.sweep.is_set:
        raise ValueError("launcher: a config with a sweep: section is run in-process (seqarch compare without "
                         "--launcher); expected a config without sweep")
    lrs = config.train.learning_rates
    specs = []
    for index, architecture in enumerate(config.architectures):
        for lr in lrs:
            for seed in seeds:
                parts = [architecture.name, f"lr-{lr:g}" if len(lrs) > 1 else "run"]
                if len(seeds) > 1:
                    parts.append(f"seed-{seed}")
                specs.append(JobSpec(config.to_dict(), index, architecture.name, lr, seed,
                                     str(config.folder.joinpath(*parts)), cache_dir, list(config.imports)))
    return specs


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Train one job (resuming from its checkpoints if any); writes and returns its ``result.json``."""
    from ..data import build_data
    from .compare import plan_comparison
    from .plugins import import_modules
    from .run import RunPaths, train_run

    import_modules(spec.imports)
    config = validate(spec.config, command="compare")
    config = config.model_copy(update={"train": config.train.for_seed(spec.seed)})
    bundle = build_data(config.data.spec(), seed=spec.seed, cache_dir=spec.cache_dir)
    name, model_config, match = plan_comparison(config, bundle)[spec.architecture]
    folder = Path(spec.folder)
    result = train_run(config, bundle, model_config, lr=spec.lr, folder=folder, resume=True, label=name)
    result.budget = BudgetResult.of(match)
    values = result.to_dict()
    RunPaths(folder).result.write_text(json.dumps(values, indent=2))
    return values


try:
    from submitit.helpers import Checkpointable
except ImportError:  # the cluster extra is not installed: launching says so
    Checkpointable = object


class TrainingJob(Checkpointable):
    """The submitit callable: a preempted or timed-out job is resubmitted with the same spec
    (``Checkpointable.checkpoint``), and resumes from the checkpoints its run folder holds."""

    def __call__(self, spec: JobSpec) -> dict[str, Any]:
        return run_job(spec)


def check_launcher(launcher: str) -> str:
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    return launcher


def slurm_parameters(options: SlurmOptions, config: RunConfig, folder: Path) -> dict[str, Any]:
    """submitit's ``slurm_*`` parameters; every option goes through submitit's own sbatch writer first,
    so one it rejects is a ValueError naming it (before anything is submitted)."""
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    devices = config.trainer.devices if isinstance(config.trainer.devices, int) else None
    values: dict[str, Any] = {"partition": options.partition, "gpus_per_node": options.gpus_per_node,
                              "time": options.time_min, "account": options.account,
                              "nodes": config.trainer.num_nodes, "ntasks_per_node": devices, **options.extra}
    values = {k: v for k, v in values.items() if v is not None}
    valid = SlurmExecutor._valid_parameters()
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"slurm: submitit rejects option(s) {unknown}; expected some of {', '.join(sorted(valid))}")
    try:
        _make_sbatch_string(command="true", folder=folder, **values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"slurm: submitit rejects the options {values}: {error}") from error
    return {f"slurm_{k}" if k != "time" else "timeout_min": v for k, v in values.items()}


def build_executor(launcher: str, folder: Path, config: RunConfig, options: SlurmOptions):
    """A submitit executor writing its logs under ``folder/submitit``."""
    try:
        import submitit
    except ImportError as error:
        raise ValueError("--launcher: needs the cluster extra (pip install -e '.[cluster]')") from error
    logs = folder / "submitit"
    if check_launcher(launcher) == "local":
        executor = submitit.LocalExecutor(folder=logs)
        executor.update_parameters(timeout_min=options.time_min)
        return executor
    parameters = slurm_parameters(options, config, logs)
    executor = submitit.AutoExecutor(folder=logs, cluster="slurm")
    executor.update_parameters(**parameters)
    return executor


def finished(spec: JobSpec) -> bool:
    return (Path(spec.folder) / "result.json").is_file()


def launch(config: RunConfig, launcher: str, *, seeds: list[int] | None = None,
           options: SlurmOptions | None = None, cache_dir: str | None = None, executor=None) -> list:
    """Submit every unfinished job of ``config``'s comparison; returns the submitit jobs.

    Writes the resolved config and ``jobs.json`` (every job's spec) into the run folder first.
    """
    from .session import save_config

    check_launcher(launcher)
    options = options or SlurmOptions()
    seeds = seeds or config.train.run_seeds
    specs = job_specs(config, seeds, cache_dir=cache_dir)
    folder = config.folder
    executor = executor or build_executor(launcher, folder, config, options)
    save_config(config, folder, "compare")
    (folder / JOBS_FILE).write_text(json.dumps([asdict(s) | {"config": None} for s in specs], indent=2))
    todo = [s for s in specs if not finished(s)]
    jobs = [executor.submit(TrainingJob(), spec) for spec in todo]
    for spec, job in zip(todo, jobs):
        log.info("submitted %s lr=%g seed=%d: job %s (%s)", spec.name, spec.lr, spec.seed, job.job_id, spec.folder)
    return jobs


def result_from_dict(values: dict[str, Any]) -> RunResult:
    """A :class:`RunResult` read back from its ``result.json``."""
    return RunResult.from_dict(values)


def collect(run_folder: str | Path, *, cache_dir: str | None = None) -> tuple[list[RunResult], list[str]]:
    """Gather the finished jobs of a launched comparison into ``run_folder``'s report (per architecture, the
    learning rate chosen on validation and every seed at it); returns the results and the folders of
    unfinished jobs."""
    from ..data import build_data
    from .compare import summarise
    from .report import write_report

    folder = Path(run_folder)
    if not (folder / JOBS_FILE).is_file() or not (folder / SAVED_CONFIG).is_file():
        raise ValueError(f"--collect: expected a run folder written by seqarch compare --launcher (with "
                         f"{JOBS_FILE} and {SAVED_CONFIG}), got {str(folder)!r}")
    config = validate(parse_yaml((folder / SAVED_CONFIG).read_text()), command="compare")
    specs = json.loads((folder / JOBS_FILE).read_text())
    bundle = build_data(config.data.spec(), seed=config.train.seed, cache_dir=cache_dir)
    metric = bundle.metric
    by_name: dict[str, list[RunResult]] = {}
    missing = []
    for spec in specs:
        path = Path(spec["folder"]) / "result.json"
        if not path.is_file():
            missing.append(spec["folder"])
            continue
        by_name.setdefault(spec["name"], []).append(result_from_dict(json.loads(path.read_text())))
    results = []
    for name, runs in by_name.items():
        # The learning rate chosen on validation over the seeds, every seed at it (the report's intervals).
        best = summarise(runs, metric)
        best.name = name
        best.seq_len = bundle.seq_len
        results.append(best)
    if results:
        write_report(folder, config, bundle, results, command=f"seqarch compare --collect {folder}",
                     wall_s=sum(r.wall_s for r in results))
    return results, missing


def wait_for(jobs: list, poll_s: float = 1.0) -> None:
    """Block until every job is done; a failed job raises with its error (its folder keeps its checkpoints)."""
    while not all(job.done() for job in jobs):
        time.sleep(poll_s)
    for job in jobs:
        job.result()
