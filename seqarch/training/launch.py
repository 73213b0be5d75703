"""``seqarch compare CONFIG --launcher slurm|local``: one job per (architecture, learning rate, seed).

Each job is the same Lightning run as ``seqarch compare`` trains in-process (``train_run``, multi-GPU or
multi-node inside it through the config's ``trainer:``), always started with ``resume``, so a job that
is preempted or times out is requeued by submitit (``Checkpointable``) and continues from its own
checkpoints. ``--launcher local`` runs the same jobs as local subprocesses (submitit's local executor);
``slurm`` submits them with ``sbatch``. ``seqarch compare --collect RUN_FOLDER`` gathers every finished
job's ``result.json`` into the run folder's report. The run folder follows ``seqarch compare``'s rule:
launching into an existing one needs ``--resume`` (and the model, data and recipe it was started with);
a resumed launch submits only the jobs that are neither finished nor still pending or running (their ids
are in ``jobs.json``), and collects at once when none is left to submit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import SAVED_CONFIG, RunConfig, parse_yaml, validate
from .durable import write_atomic
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


def job_specs(config: RunConfig, plan: list, *, cache_dir: str | None = None) -> list[JobSpec]:
    """Every (architecture, learning rate, seed) of ``config``'s comparison (``plan``: its
    :func:`~seqarch.training.compare.plan_comparison`), in the run folders ``seqarch compare`` trains."""
    from .compare import planned_runs

    return [JobSpec(config.to_dict(), run.index, run.name, run.lr, run.seed, str(run.folder), cache_dir,
                    list(config.imports)) for run in planned_runs(config, plan, config.folder)]


def check_no_sweep(config: RunConfig) -> None:
    if config.sweep.is_set:
        raise ValueError("launcher: a config with a sweep: section is run in-process (seqarch compare without "
                         "--launcher); expected a config without sweep")


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Train one job (resuming from its checkpoints if any); writes and returns its ``result.json``."""
    from lightning.pytorch.utilities import rank_zero_only

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
    # Every rank of a multi-GPU job returns the result; one writes it, whole or not at all.
    if rank_zero_only.rank == 0:
        write_atomic(RunPaths(folder).result, json.dumps(values, indent=2))
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


# submitit SLURM parameters that have an option of their own (or come from the trainer: section).
SLURM_OWN_OPTIONS = {"partition": "--partition or slurm.partition", "gpus_per_node": "--gpus or slurm.gpus",
                     "time": "--time or slurm.time", "account": "--account or slurm.account",
                     "nodes": "trainer.num_nodes", "ntasks_per_node": "trainer.devices"}


def _submitit(module: str = "submitit"):
    """``submitit`` (or one of its modules), or a ValueError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError("--launcher: needs the cluster extra (pip install -e '.[cluster]')") from error


def check_slurm_extra(extra: dict[str, Any], source: str) -> dict[str, Any]:
    """``extra``'s submitit SLURM parameters (``source``: where they were given, ``slurm.extra`` or
    ``--slurm-option``), each checked by submitit's SlurmExecutor and sbatch writer; returns ``extra``."""
    slurm = _submitit("submitit.slurm.slurm")
    valid = set(slurm.SlurmExecutor._valid_parameters()) - set(SLURM_OWN_OPTIONS)
    for key, value in extra.items():
        where = f"{source} {key}" if source.startswith("-") else f"{source}.{key}"
        if key in SLURM_OWN_OPTIONS:
            raise ValueError(f"{where}: set by {SLURM_OWN_OPTIONS[key]}; expected another submitit SLURM option")
        if key not in valid:
            raise ValueError(f"{where}: submitit's SLURM executor has no such option; expected one of "
                             f"{', '.join(sorted(valid))}")
        try:
            slurm._make_sbatch_string(command="true", folder="submitit", **{key: value})
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{where}: submitit rejects the value {value!r}: {error}") from error
    return extra


def slurm_parameters(options: SlurmOptions, config: RunConfig, folder: Path) -> dict[str, Any]:
    """submitit's ``slurm_*`` parameters; every option goes through submitit's own sbatch writer first,
    so one it rejects is a ValueError naming it (before anything is submitted)."""
    slurm = _submitit("submitit.slurm.slurm")
    devices = config.trainer.devices if isinstance(config.trainer.devices, int) else None
    values: dict[str, Any] = {"partition": options.partition, "gpus_per_node": options.gpus_per_node,
                              "time": options.time_min, "account": options.account,
                              "nodes": config.trainer.num_nodes, "ntasks_per_node": devices,
                              **check_slurm_extra(options.extra, "SlurmOptions.extra")}
    values = {k: v for k, v in values.items() if v is not None}
    try:
        slurm._make_sbatch_string(command="true", folder=folder, **values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"slurm: submitit rejects the options {values}: {error}") from error
    return {f"slurm_{k}" if k != "time" else "timeout_min": v for k, v in values.items()}


def build_executor(launcher: str, folder: Path, config: RunConfig, options: SlurmOptions):
    """A submitit executor writing its logs under ``folder/submitit``."""
    submitit = _submitit()
    logs = folder / "submitit"
    if check_launcher(launcher) == "local":
        executor = submitit.LocalExecutor(folder=logs)
        executor.update_parameters(timeout_min=options.time_min)
        return executor
    parameters = slurm_parameters(options, config, logs)
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:  # submitit's own check is a RuntimeError deep inside it, and names srun only
        raise ValueError(f"--launcher slurm: SLURM's {' and '.join(missing)} not found on PATH; expected a machine "
                         "that submits SLURM jobs (a cluster's login node), or use --launcher local")
    executor = submitit.AutoExecutor(folder=logs, cluster="slurm")
    executor.update_parameters(**parameters)
    return executor


def finished(spec: JobSpec) -> bool:
    """Whether the job's ``result.json`` says it trained its steps (or stopped early): a resume that
    raised ``train.steps`` submits it again, to continue from its checkpoint."""
    path = Path(spec.folder) / "result.json"
    try:
        values = json.loads(path.read_text())
        return values["steps"] >= spec.config["train"]["steps"] or bool(values.get("stopped_early"))
    except (OSError, ValueError, KeyError, TypeError):  # absent or unreadable: the job trains (on) again
        return False


# SLURM states (sacct) of a job that is waiting, running or about to run again.
SLURM_ACTIVE_STATES = ("READY", "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "PREEMPTED",
                       "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")


def local_job_alive(job_id: str) -> bool:
    """Whether submitit's local controller process ``job_id`` (its pid) still runs (a pid taken since by
    another program, or a finished controller not yet reaped, is not the job)."""
    try:
        pid = int(job_id)
        if pid <= 0:  # os.kill(0, ...) would ask about this process group
            return False
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():  # Linux: the controller's command line and that it is no zombie
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return False
        return state != "Z" and b"submitit" in command
    return True


def slurm_job_state(job_id: str, logs: Path) -> str:
    """SLURM's state of ``job_id`` (sacct through submitit); ``UNKNOWN`` when sacct does not say."""
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob(folder=logs, job_id=job_id).get_info(mode="force").get("State") or "UNKNOWN"


def job_active(entry: dict[str, Any], logs: Path) -> bool:
    """Whether the job ``entry`` of ``jobs.json`` (its launcher and id) is still pending or running."""
    job_id = entry.get("job_id")
    if not job_id:
        return False
    if entry.get("launcher") == "local":
        return local_job_alive(job_id)
    state = slurm_job_state(job_id, logs).split()[0]  # e.g. "CANCELLED by 123": the state is the first word
    if state == "UNKNOWN":
        log.warning("job %s (%s): sacct does not know its state; it is submitted again", job_id, entry.get("folder"))
    return state in SLURM_ACTIVE_STATES


def read_jobs(folder: Path) -> dict[str, dict[str, Any]]:
    """The entries of ``folder``'s ``jobs.json`` by run folder (none when there is no readable one)."""
    try:
        return {entry["folder"]: entry for entry in json.loads((folder / JOBS_FILE).read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_jobs(folder: Path, specs: list[JobSpec], entries: dict[str, dict[str, Any]]) -> None:
    """``jobs.json``: every job's spec (without the config, saved beside it) and its launcher and job id."""
    rows = [asdict(spec) | {"config": None, "launcher": entries.get(spec.folder, {}).get("launcher"),
                            "job_id": entries.get(spec.folder, {}).get("job_id")} for spec in specs]
    write_atomic(folder / JOBS_FILE, json.dumps(rows, indent=2))


def launch(config: RunConfig, launcher: str, *, seeds: list[int] | None = None,
           options: SlurmOptions | None = None, cache_dir: str | None = None, executor=None,
           resume: bool = False) -> list:
    """Submit every job of ``config``'s comparison that is neither finished nor still pending or
    running; returns the submitted submitit jobs.

    The run folder follows ``seqarch compare``'s rule, checked before anything is written: an existing
    one only with ``resume``, and then only with the model, data and recipe it was started with (its
    ``config.yaml``, and each job's checkpoints). The resolved config and ``jobs.json`` (every job's
    spec, launcher and job id) are written into it. ``seeds``: ``train.seeds`` for this launch.
    """
    from ..data import build_data
    from .compare import check_run_folders, plan_comparison
    from .run_folder import check_run_folder, record_resume
    from .session import save_config

    check_launcher(launcher)
    check_no_sweep(config)
    options = options or SlurmOptions()
    if seeds is not None:
        config = config.model_copy(update={"train": config.train.model_copy(update={"seeds": list(seeds)})})
    folder = config.folder
    changes = check_run_folder(folder, config, "compare", resume=resume)
    bundle = build_data(config.data.spec(), seed=config.train.seed, cache_dir=cache_dir)
    plan = plan_comparison(config, bundle)
    check_run_folders(config, bundle, folder, plan, resume=resume)
    specs = job_specs(config, plan, cache_dir=cache_dir)
    entries = read_jobs(folder) if resume else {}
    logs = folder / "submitit"
    todo = []
    for spec in specs:
        if finished(spec):
            continue
        if job_active(entries.get(spec.folder, {}), logs):
            log.info("%s lr=%g seed=%d: job %s is still pending or running; not submitted again", spec.name,
                     spec.lr, spec.seed, entries[spec.folder]["job_id"])
            continue
        todo.append(spec)
    if todo:
        executor = executor or build_executor(launcher, folder, config, options)
    save_config(config, folder, "compare")
    if resume:
        record_resume(folder, changes)
    write_jobs(folder, specs, entries)
    jobs = []
    for spec in todo:
        job = executor.submit(TrainingJob(), spec)
        jobs.append(job)
        entries[spec.folder] = {"launcher": launcher, "job_id": str(job.job_id)}
        write_jobs(folder, specs, entries)  # after each submission: a launcher killed here forgets no job
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
