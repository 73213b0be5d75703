"""A progress line a person can read, in place of Lightning's bar: which run (``[2/4] s4d``), the
step, the loss and the task's metric, and an ETA for this run and for the whole comparison.

One line at most every ``every_s`` seconds, one after each evaluation, and one at the end that says
whether the run finished, stopped early (``train.stop_at`` reached) or failed. No step gets two lines:
a step that validates prints once, after its validation (with the metric), and the last step prints
only its end line.
"""

from __future__ import annotations

import logging
import math
import os
import time

import lightning as L

log = logging.getLogger("seqarch")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class ProgressLine(L.Callback):
    """Logs ``[index/total] name  step s/steps  loss ...  <metric> ...  ETA run ..., all ...``.

    Args:
        name: the architecture (or model) the run trains.
        index: its place in the comparison, from 1; ``total``: the comparison's runs.
        steps: the run's optimiser steps (every run of a comparison has as many).
        metric: the task's validation metric (``val/accuracy``, ``val/loss``).
        every_s: seconds between lines while training.
        eval_every: the run's steps between validations (``train.eval_every``): those steps print
            after validating, not before.
    """

    def __init__(self, name: str, index: int, total: int, steps: int, metric: str, every_s: float = 10.0,
                 eval_every: int | None = None) -> None:
        self.name, self.index, self.total, self.steps, self.metric = name, index, total, steps, metric
        self.every_s, self.eval_every = every_s, eval_every
        self._start_step = 0
        self._start_time = 0.0
        self._last_line = -math.inf
        self._is_global_zero = True
        self.lines: list[str] = []

    def _eta(self, step: int) -> tuple[float, float]:
        done = step - self._start_step
        if done <= 0:
            return math.inf, math.inf
        per_step = (time.perf_counter() - self._start_time) / done
        run = per_step * (self.steps - step)
        return run, run + per_step * self.steps * (self.total - self.index)

    def _line(self, trainer: L.Trainer, status: str = "") -> str:
        step = trainer.global_step
        metrics = trainer.callback_metrics
        parts = [f"[{self.index}/{self.total}] {self.name}", f"step {step}/{self.steps}"]
        if "train/loss" in metrics:
            parts.append(f"loss {float(metrics['train/loss']):.4f}")
        if self.metric in metrics:
            parts.append(f"{self.metric} {float(metrics[self.metric]):.4f}")
        if status:
            parts.append(status)
        else:
            run, everything = self._eta(step)
            parts.append(f"ETA run {_duration(run)}" + (f", all {_duration(everything)}" if self.total > 1 else ""))
        return "  ".join(parts)

    def _emit(self, line: str) -> None:
        if not self._is_global_zero:
            return
        self.lines.append(line)
        if log.isEnabledFor(logging.INFO):
            log.info("%s", line)
        self._last_line = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._is_global_zero = trainer.is_global_zero
        self._start_step, self._start_time = trainer.global_step, time.perf_counter()
        resumed = f" (resumed at step {trainer.global_step})" if trainer.global_step else ""
        self._emit(f"[{self.index}/{self.total}] {self.name}  training {self.steps} steps{resumed}")

    def _validates(self, step: int) -> bool:
        return self.eval_every is not None and step % self.eval_every == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # A validating step prints after its validation, the last one at the end: one line per step.
        if self._validates(step) or step >= self.steps:
            return
        if time.perf_counter() - self._last_line >= self.every_s:
            self._emit(self._line(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if trainer.global_step >= self.steps or trainer.should_stop:
            return  # the end line follows, with this validation's metric
        self._emit(self._line(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        status = "done" if step >= self.steps else f"stopped early at step {step}: {self.metric} reached train.stop_at"
        self._emit(self._line(trainer, status + f" in {_duration(time.perf_counter() - self._start_time)}"))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._emit(self._line(trainer, f"failed: {type(exception).__name__}"))


class LoadSampler(L.Callback):
    """The machine's 1-minute load average, sampled as a run trains (its start, every validation, its end):
    ``mean`` says how busy the machine was while the run's tokens/s were measured (``None`` where the
    platform has no load average)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def _sample(self) -> None:
        if hasattr(os, "getloadavg"):
            self.samples.append(os.getloadavg()[0])

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None

    def on_train_start(self, trainer, pl_module) -> None:
        self._sample()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._sample()

    def on_train_end(self, trainer, pl_module) -> None:
        self._sample()
