"""Checkpoints that a killed run never loses: written to a temporary file and renamed
into place, older ones deleted only after the newer one is complete.

Files are ``step-0000200.ckpt`` in a run's ``checkpoints/`` folder; resuming takes
the one with the highest step.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
import torch

from ..data import Metric

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file."""


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
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot be read ({type(error).__name__}: {error})") from error
    missing = [k for k in ("state_dict", "global_step", "hyper_parameters", "optimizer_states") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a seqarch training checkpoint, missing {missing}")
    return checkpoint


class StepCheckpoint(L.Callback):
    """Save every ``every`` optimiser steps and at the end; keep the newest ``keep``."""

    def __init__(self, folder: str | Path, every: int, keep: int) -> None:
        self.folder = Path(folder)
        self.every = every
        self.keep = keep
        self.last_saved_step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if step == self.last_saved_step:
            return
        final = self.folder / f"step-{step:07d}.ckpt"
        partial = final.with_suffix(".ckpt.partial")
        if trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(partial)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, final)
            for old in list_checkpoints(self.folder)[: -self.keep]:
                old.unlink()
        trainer.strategy.barrier("seqarch_checkpoint")
        self.last_saved_step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)


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

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        tokens = trainer.global_step * self.tokens_per_step
        self.history.append({
            "step": trainer.global_step, "tokens": tokens,
            "training_flops": tokens * self.training_flops_per_token, **metrics,
        })
        value = metrics.get(self.metric.name)
        if self.stop_at is not None and value is not None and self.metric.reached(value, self.stop_at):
            trainer.should_stop = True
