"""Train one model: build it from a config, fit it with Lightning, measure it.

:func:`train_run` is what ``seqarch train`` calls once and ``seqarch compare``
calls per architecture and learning rate.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from ..data import DataBundle
from ..memory import PeakMemory
from ..models import ModelConfig
from .checkpoints import CheckpointError, EvalHistory, StepCheckpoint, check_checkpoint, latest_checkpoint
from .config import Architecture, RunConfig, TrainerSection, TrainSection
from .datamodule import SeqarchDataModule
from .durable import write_atomic
from .errors import ConfigError
from .loggers import build_loggers
from .module import SeqarchModule, run_fingerprint
from .progress import LoadSampler, ProgressLine
from .result import RunResult, split_metric
from .run_folder import check_fingerprint

log = logging.getLogger(__name__)


def model_config_for(config: RunConfig, bundle: DataBundle, architecture: Architecture | None = None) -> ModelConfig:
    """The ``ModelConfig`` of a run: the config's ``model`` section, then an architecture's preset
    and overrides, then what the data fixes (vocabulary, classes, length)."""
    values = config.model.overrides()
    if architecture is not None:
        values = architecture.model_fields_over(values)
    values["vocab_size"] = bundle.vocab_size
    values["num_classes"] = bundle.num_classes
    values["max_length"] = max(int(values.get("max_length") or 0), bundle.seq_len)
    return ModelConfig.from_dict(values)


def check_length_limit(model_config: ModelConfig, bundle: DataBundle) -> None:
    """Refuse, before anything trains, a test length (``bundle.length_tests``) longer than a layer's
    parallel form takes (``seqarch compare`` checks every architecture's matched model before the first
    trains; :func:`train_run` checks its own).

    The limits are the kernel generators' ``max_length`` (S4's DPLR kernel, Hyena's and M2's implicit
    filters), which is ``model.max_length`` (the training length unless set). It is not raised to the test
    length on the model's behalf: no parameter count depends on it, but the function does (Hyena's filters
    place position ``t`` at ``t / max_length``; S4's kernel is built for ``max_length`` taps), so a longer one
    trains another model; the message says how to ask for it. Attention (rotary positions are
    computed for any length; ``max_length`` only sizes the KV cache of the recurrent form), the diagonal
    SSMs and the selective scans take any length.
    """
    from ..budget import build_meta_model
    from ..modules.kernel_generator import KernelGenerator

    if not bundle.length_tests:
        return
    length = max(bundle.length_tests)
    for index, block in enumerate(build_meta_model(model_config).backbone.blocks):
        limits = [module.max_length for module in block.mixer.modules()
                  if isinstance(module, KernelGenerator) and module.max_length is not None]
        if limits and min(limits) < length:
            name = type(block.mixer).__name__
            raise ConfigError(
                f"data.test_lengths: expected lengths of at most {min(limits)}, the longest the {name} mixer of "
                f"layer {index} takes (model.max_length={model_config.max_length}, the length its kernel is made for), "
                f"got {length}; set model.max_length: {length} (or in the architecture's overrides) to build "
                "it for that length (no extra parameters, but a different model), or drop the longer lengths"
            )


def _precision(train: TrainSection) -> str:
    if train.precision == "auto":
        return "bf16-mixed" if torch.cuda.is_available() else "32"
    return train.precision


def placement(options: TrainerSection) -> dict:
    """The ``L.Trainer`` arguments of the config's ``trainer`` section: where and on how many devices."""
    return {"accelerator": options.accelerator, "devices": options.devices, "strategy": options.strategy,
            "num_nodes": options.num_nodes}


def check_trainer_options(options: TrainerSection) -> None:
    """Let Lightning judge the ``trainer`` section before anything trains (``accelerator: gpu`` on a
    machine without one, ``devices: abc``); raises :class:`ConfigError` with its reason."""
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = lightning_log.level
    lightning_log.setLevel(logging.ERROR)  # its device lines come once, from the real trainer
    try:
        L.Trainer(**placement(options), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)
    except (MisconfigurationException, ValueError, RuntimeError, TypeError) as error:
        values = options.model_dump(exclude={"enable_progress_bar"})
        reason = " ".join(str(error).split())
        raise ConfigError(f"trainer: Lightning cannot train with {values}: {reason}") from None
    finally:
        lightning_log.setLevel(level)


@dataclass
class RunPaths:
    folder: Path

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def result(self) -> Path:
        return self.folder / "result.json"


def prepare_run_folder(folder: Path, resume: bool, fingerprint: dict | None = None) -> tuple[Path | None, int]:
    """Check the run folder before training; returns the checkpoint to resume from and its step.

    A folder that already holds checkpoints is never trained over without ``resume``; on resume the
    newest checkpoint must be readable and made by the same model and recipe (``fingerprint``:
    :func:`run_fingerprint`'s data), else :class:`CheckpointError` names the file and the keys.
    """
    paths = RunPaths(folder)
    latest = latest_checkpoint(paths.checkpoints)
    if not resume:
        if latest is not None:
            raise CheckpointError(
                f"output: {str(folder)!r} already holds checkpoints (latest {latest.name}); "
                "pass --resume to continue that run, or choose another output/name"
            )
        return None, 0
    if latest is None:
        return None, 0
    checkpoint = check_checkpoint(latest)
    if fingerprint is not None:
        try:
            check_fingerprint(latest, checkpoint["hyper_parameters"], fingerprint)
        except ValueError as error:
            raise CheckpointError(str(error)) from None
    return latest, int(checkpoint["global_step"])


def finished_result(folder: Path, steps: int, resumed_from: int) -> RunResult | None:
    """The result of a run in ``folder`` that already finished (its newest checkpoint is the one its
    ``result.json`` was written after, and it reached ``steps`` or stopped early); ``None`` otherwise."""
    path = RunPaths(folder).result
    if not path.is_file():
        return None
    try:
        result = RunResult.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: the run is trained on from its checkpoint and the file written again
    if result.failure is None and result.steps == resumed_from and (result.steps >= steps or result.stopped_early):
        return result
    return None


def _test_metrics(trainer: L.Trainer, metric_name: str, bundle: DataBundle) -> tuple[float | None, dict]:
    """The test split's metric and each test length's, from a ``trainer.test`` just run."""
    def value(split: str) -> float | None:
        found = trainer.callback_metrics.get(split_metric(metric_name, split))
        return None if found is None else float(found)

    return value("test"), {str(length): value(f"test@{length}") for length in bundle.length_tests}


def test_finished_run(config: RunConfig, bundle: DataBundle, model_config: ModelConfig, done: RunResult,
                      ckpt_path: Path, *, lr: float, folder: Path) -> RunResult:
    """A finished run's final model (its newest checkpoint, ``ckpt_path``) tested at test lengths its
    ``result.json`` lacks (``data.test_lengths`` added after it trained); nothing is trained and the
    checkpoints stay as they were. The lengths it has keep their values; ``result.json`` is rewritten."""
    module = SeqarchModule(model_config, bundle.kind, config.train, lr, bundle.seq_len, config.budget.attention_flops)
    trainer = L.Trainer(precision=_precision(config.train), **placement(config.trainer), logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=str(folder))
    with warnings.catch_warnings():
        # Only the weights are read: the training callbacks whose state the checkpoint holds are not needed.
        warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used")
        trainer.test(module, datamodule=SeqarchDataModule(bundle, config.train), ckpt_path=str(ckpt_path),
                     weights_only=True, verbose=False)
    _, lengths = _test_metrics(trainer, bundle.metric.name, bundle)
    done.test_lengths = {**lengths, **done.test_lengths}
    if trainer.is_global_zero:
        write_atomic(RunPaths(folder).result, json.dumps(done.to_dict(), indent=2))
    return done


def train_run(config: RunConfig, bundle: DataBundle, model_config: ModelConfig, *, lr: float, folder: Path,
              resume: bool = False, label: str | None = None, callbacks: list | None = None,
              position: tuple[int, int] = (1, 1), progress_label: str | None = None) -> RunResult:
    """Train ``model_config`` on ``bundle`` with the config's recipe at learning rate ``lr``.

    Writes ``folder/checkpoints/``, ``folder/logs/metrics.csv`` and ``folder/result.json``;
    returns the :class:`RunResult` (parameters, FLOPs, metrics, tokens/s, peak memory, history).
    ``callbacks``: extra Lightning callbacks (after the checkpoint and history ones). ``position``:
    ``(index, total)`` of this run in a comparison, for the progress line (``trainer.enable_progress_bar``),
    which names the run ``progress_label`` (default: ``label``).
    """
    train = config.train
    folder = Path(folder)
    check_length_limit(model_config, bundle)
    ckpt_path, resumed_from = prepare_run_folder(
        folder, resume, run_fingerprint(model_config, bundle.kind, train, lr, bundle.seq_len))
    if resume and ckpt_path is None:  # killed before its first checkpoint, or never started
        log.info("no checkpoint in %s: starting at step 0", folder)
    if resume and (done := finished_result(folder, train.steps, resumed_from)) is not None:
        if all(str(length) in done.test_lengths for length in bundle.length_tests):
            log.info("%s: finished before (step %d); its result is kept as it was", label or folder.name, done.steps)
            return done
        log.info("%s: finished before (step %d); its final model is tested at the new test lengths",
                 label or folder.name, done.steps)
        return test_finished_run(config, bundle, model_config, done, ckpt_path, lr=lr, folder=folder)
    L.seed_everything(train.seed, workers=True, verbose=False)
    module = SeqarchModule(model_config, bundle.kind, train, lr, bundle.seq_len, config.budget.attention_flops)
    if train.compile:
        module.model = torch.compile(module.model)
    tokens_per_step = train.batch_size * bundle.seq_len
    training_flops_per_token = module.step_flops.training_per_token  # per-sequence x batch + once per step
    history = EvalHistory(tokens_per_step, training_flops_per_token, bundle.metric, train.stop_at)
    options = config.trainer
    load = LoadSampler()
    trainer = L.Trainer(
        max_steps=train.steps, max_epochs=-1,
        val_check_interval=train.eval_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=train.log_every,
        gradient_clip_val=train.grad_clip, precision=_precision(train), **placement(options),
        enable_progress_bar=False,  # ProgressLine instead of Lightning's bar
        use_distributed_sampler=False, enable_checkpointing=True,  # StepCheckpoint is the only one
        enable_model_summary=False,
        logger=build_loggers(config.logger, folder, label or folder.name, config.wandb.model_dump(),
                             resumed_from=resumed_from),
        callbacks=[history, load,
                   StepCheckpoint(RunPaths(folder).checkpoints, train.checkpoint_every, train.keep_checkpoints,
                                  validates=lambda step: step % train.eval_every == 0),
                   *([ProgressLine(progress_label or label or folder.name, *position, train.steps,
                                   bundle.metric.name, eval_every=train.eval_every)]
                     if options.enable_progress_bar else []),
                   *(callbacks or [])],
        default_root_dir=str(folder),
    )
    datamodule = SeqarchDataModule(bundle, train)
    memory = PeakMemory(trainer.strategy.root_device)
    start = time.perf_counter()
    with memory, warnings.catch_warnings():
        # Lightning warns that a mid-epoch resume is inexact unless the loader is stateful; ours is exact:
        # StepBatchSampler starts from the restored global step.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        # Our checkpoints hold only tensors and plain data (check_checkpoint refuses anything else).
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None,
                    weights_only=True)
        if not history.history or history.history[-1]["step"] != trainer.global_step:
            trainer.validate(module, datamodule=datamodule, verbose=False)
        # tokens/s counts training (and its evaluations), not the final test: test sets at long lengths
        # (data.test_lengths) can cost as much as a good share of training.
        trained_s = time.perf_counter() - start
        # The final model on the held-out test split: what a comparison reports (validation chose the lr);
        # then on the test sets at other lengths (data.test_lengths), each through the same loop.
        trainer.test(module, datamodule=datamodule, verbose=False)
    test_value, length_values = _test_metrics(trainer, bundle.metric.name, bundle)
    wall = time.perf_counter() - start
    metric = bundle.metric
    train_name = split_metric(metric.name, "train_eval")
    values = [h[metric.name] for h in history.history if metric.name in h]
    best = None
    for value in values:
        best = value if best is None or metric.better(value, best) else best
    model = module.model
    state_size = sum(block.mixer.state_size(bundle.seq_len) for block in model.backbone.blocks
                     if getattr(block.mixer, "causal", False))
    steps_done = trainer.global_step
    result = RunResult(
        name=label or folder.name, mixer=model_config.mixer, lr=lr, d_model=model_config.d_model,
        n_layers=model_config.n_layers, params=model.num_params(), flops_per_token=module.flops_per_token,
        training_flops=steps_done * tokens_per_step * training_flops_per_token, steps=steps_done,
        metric=metric.name, higher_is_better=metric.higher_is_better,
        final=values[-1] if values else None, best=best, state_size=state_size,
        tokens_per_s=(steps_done - resumed_from) * tokens_per_step / trained_s if trained_s > 0 else None,
        wall_s=history.wall_before + wall, stopped_early=steps_done < train.steps, peak_memory_bytes=memory.peak_bytes,
        training_memory_bytes=memory.growth_bytes, load_average=load.mean,
        device=str(trainer.strategy.root_device),
        history=history.history, model_config=model_config, folder=str(folder), seed=train.seed,
        test=test_value, test_lengths=length_values,
        train_final=next((h[train_name] for h in reversed(history.history) if train_name in h), None),
        train_data="fresh" if bundle.fresh_train else "finite",
    )
    if trainer.is_global_zero:
        write_atomic(RunPaths(folder).result, json.dumps(result.to_dict(), indent=2))
    return result
