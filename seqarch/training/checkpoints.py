"""Checkpoints that a killed run never loses: written to a temporary file and renamed
into place, older ones deleted only after the newer one is complete.

Files are ``step-0000200.ckpt`` in a run's ``checkpoints/`` folder; resuming takes
the one with the highest step.
"""

from __future__ import annotations

import math
import pickle
import re
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from ..data import Metric
from .durable import replace_durably
from .errors import CheckpointError, NonFiniteLossError

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.ckpt$")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def check_checkpoint(path: str | Path) -> dict:
    """Load ``path`` on the CPU and check it is a seqarch training checkpoint; returns it.

    Raises :class:`CheckpointError` naming the file for a truncated, corrupt or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file: {str(path)!r}")
    try:
        # weights_only: tensors and plain data only, so loading someone else's file cannot run their code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is None:  # a damaged file, not a foreign object
            reason = next((line for line in str(error).splitlines() if line.startswith("Unsupported")), "damaged")
            raise CheckpointError(f"checkpoint {str(path)!r}: cannot be read (UnpicklingError: {reason})") from None
        raise CheckpointError(
            f"checkpoint {str(path)!r}: refused: it holds Python objects beyond tensors and plain data"
            f"{f' ({found.group(1)})' if found else ''}, and loading those can run code; seqarch loads only "
            "checkpoints readable with torch.load(weights_only=True)"
        ) from None
    except Exception as error:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a seqarch training checkpoint (a mapping), "
                              f"got {type(checkpoint).__name__}")
    missing = [k for k in ("state_dict", "global_step", "hyper_parameters", "optimizer_states") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a seqarch training checkpoint, missing {missing}")
    return checkpoint


def non_finite_tensors(pl_module: L.LightningModule, optimizers: list) -> list[str]:
    """Names of the weights and optimiser-state tensors holding NaN or Inf (empty when all are finite)."""
    bad = [name for name, value in pl_module.state_dict().items()
           if value.is_floating_point() and not torch.isfinite(value).all()]
    for i, optimizer in enumerate(optimizers):
        for index, state in enumerate(optimizer.state.values()):
            bad += [f"optimizer[{i}].state[{index}].{key}" for key, value in state.items()
                    if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
    return bad


class StepCheckpoint(Checkpoint):
    """Save every ``every`` optimiser steps and at the end; keep the newest ``keep``.

    A step that also validates (``validates(step)``) is saved after its validation, so the checkpoint
    holds that evaluation. A checkpoint is never written with a non-finite weight or optimiser state:
    the run stops with :class:`NonFiniteLossError` instead, and the earlier checkpoints stay.
    (A ``Checkpoint`` subclass: Lightning calls it after the other callbacks, the history included.)
    """

    def __init__(self, folder: str | Path, every: int, keep: int, validates: Callable[[int], bool] = lambda _: False
                 ) -> None:
        self.folder = Path(folder)
        self.every = every
        self.keep = keep
        self.validates = validates
        self.last_saved_step: int | None = None
        self._pending_step: int | None = None

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self.last_saved_step:
            return
        bad = non_finite_tensors(pl_module, trainer.optimizers)
        if bad:
            raise NonFiniteLossError(
                f"{len(bad)} weight or optimiser tensors are NaN or infinite at step {step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); stopping without writing that checkpoint. Checkpoints "
                "written before this step are kept; lower train.lr or set train.grad_clip"
            )
        final = self.folder / f"step-{step:07d}.ckpt"
        partial = final.with_suffix(".ckpt.partial")
        if trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(partial, weights_only=False)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            replace_durably(partial, final)
            for old in list_checkpoints(self.folder)[: -self.keep]:
                old.unlink()
        trainer.strategy.barrier("seqarch_checkpoint")
        self.last_saved_step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0:
            if self.validates(step):
                self._pending_step = step
            else:
                self._save(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._pending_step == trainer.global_step and not trainer.sanity_checking:
            self._pending_step = None
            self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)


class EvalHistory(L.Callback):
    """Records every validation: step, tokens seen, training FLOPs so far and the metrics.

    ``stop_at``: stop training once the task's ``metric`` reaches it (at least as high for
    accuracy, at least as low for a loss; Zoology stops MQAR at 0.99 accuracy).
    """

    def __init__(self, tokens_per_step: int, training_flops_per_token: float, metric: Metric,
                 stop_at: float | None) -> None:
        self.tokens_per_step = tokens_per_step
        self.training_flops_per_token = training_flops_per_token
        self.metric = metric
        self.stop_at = stop_at
        self.history: list[dict] = []
        # Training wall time of the processes before a resume (so a resumed run reports its whole time).
        self.wall_before = 0.0
        self._started = time.perf_counter()

    def state_dict(self) -> dict:
        return {"history": self.history, "wall_s": self.wall_before + time.perf_counter() - self._started}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.wall_before = float(state_dict.get("wall_s", 0.0))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train_eval/"))}
        tokens = trainer.global_step * self.tokens_per_step
        self.history.append({
            "step": trainer.global_step, "tokens": tokens,
            "training_flops": tokens * self.training_flops_per_token, **metrics,
        })
        loss = metrics.get("val/loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLossError(f"validation loss is {loss} at step {trainer.global_step}; stopping. "
                                     "Checkpoints written before this step are kept; "
                                     "lower train.lr or set train.grad_clip")
        value = metrics.get(self.metric.name)
        if self.stop_at is not None and value is not None and self.metric.reached(value, self.stop_at):
            trainer.should_stop = True
