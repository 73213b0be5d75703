"""Checkpoints that never hold NaN, load without running code, survive a power loss, and keep their
evaluation; NaN stops a run at the step it appears."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from test_training_run import KillAt, Killed, fit, tiny_config

from seqarch.training import durable
from seqarch.training.checkpoints import CheckpointError, check_checkpoint, list_checkpoints
from seqarch.training.cli import main
from seqarch.training.module import NonFiniteLossError, SeqarchModule


def test_an_infinite_gradient_stops_at_its_step_and_no_checkpoint_holds_it(tmp_path, monkeypatch):
    config = tiny_config(steps=8, checkpoint_every=1, keep_checkpoints=20)
    original = SeqarchModule._loss_and_counts

    def poisoned(self, batch):
        loss, scored, correct = original(self, batch)
        if self.training and self.global_step >= 5:
            weight = next(self.model.parameters())
            loss = loss + torch.sqrt((weight - weight.detach()).abs().sum())  # finite value, infinite gradient
        return loss, scored, correct

    monkeypatch.setattr(SeqarchModule, "_loss_and_counts", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 5; stopping before that update"):
        fit(config, tmp_path / "run")
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert kept[-1].name == "step-0000005.ckpt"
    for path in kept:
        checkpoint = check_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


class CorruptWeightsAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_non_finite_weights_are_never_written(tmp_path):
    # Weights that became NaN some other way (an overflow in the update) stop the save itself.
    config = tiny_config(steps=6, checkpoint_every=1, keep_checkpoints=20)
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite at step 3 \(model.*\); stopping without writing"):
        fit(config, tmp_path / "run", callbacks=[CorruptWeightsAt(3)])
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == "step-0000002.ckpt"


def test_a_nan_validation_loss_stops_the_run(tmp_path, monkeypatch):
    config = tiny_config(steps=12)
    original = SeqarchModule._loss_and_counts

    def poisoned(self, batch):
        loss, scored, correct = original(self, batch)
        return (loss if self.training else loss * float("nan")), scored, correct

    monkeypatch.setattr(SeqarchModule, "_loss_and_counts", poisoned)
    with pytest.raises(NonFiniteLossError, match="validation loss is nan at step 6"):
        fit(config, tmp_path / "run")


def test_a_checkpoint_taken_at_an_eval_step_keeps_that_evaluation(tmp_path):
    config = tiny_config(steps=12, eval_every=6, checkpoint_every=6)
    whole = fit(config, tmp_path / "whole")
    with pytest.raises(Killed):
        fit(config, tmp_path / "killed", callbacks=[KillAt(8)])
    saved = check_checkpoint(tmp_path / "killed" / "checkpoints" / "step-0000006.ckpt")
    assert [h["step"] for h in saved["callbacks"]["EvalHistory"]["history"]] == [6]
    resumed = fit(config, tmp_path / "killed", resume=True)
    assert [h["step"] for h in resumed.history] == [6, 12]
    assert resumed.history == whole.history and resumed.best == whole.best


def test_checkpoints_load_with_weights_only_and_anything_else_is_refused(tmp_path):
    fit(tiny_config(steps=2, checkpoint_every=2), tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "step-0000002.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2 and checkpoint["rng_states"]["numpy"][0] == "MT19937"

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    hostile = tmp_path / "hostile.ckpt"
    torch.save({**checkpoint, "extra": Payload()}, hostile)
    with pytest.raises(CheckpointError, match=r"hostile.ckpt.*refused.*weights_only=True"):
        check_checkpoint(hostile)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="broken.ckpt"):
        check_checkpoint(broken)


def test_a_checkpoint_is_flushed_to_disk_before_and_after_its_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(durable.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(durable.os, "replace", lambda a, b: (events.append(f"replace {Path(b).name}"),
                                                               real_replace(a, b))[1])
    fit(tiny_config(steps=2, checkpoint_every=2), tmp_path / "run")
    at = events.index("replace step-0000002.ckpt")
    assert events[at - 1] == "fsync" and events[at + 1] == "fsync", events


RESUMED = {"name": "tiny", "data": {"task": "mqar", "num_train": 64, "num_test": 32, "seq_len": 16},
           "model": {"d_model": 16, "mixer": "s4d"},
           "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "checkpoint_every": 1, "log_every": 1,
                     "warmup_steps": 1}, "trainer": {"accelerator": "cpu"}}


def test_a_resume_prints_no_lightning_notices(tmp_path):
    # A fresh process (as a person runs it), without --quiet: what it prints is what a reader sees.
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RESUMED))
    assert main(["train", str(path), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    done = subprocess.run([sys.executable, "-m", "seqarch.training.cli", "train", str(path), "train.steps=3",
                           "--output", str(tmp_path / "runs"), "--resume"], check=False, capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "(resumed at step 2)" in output and "step 3/3" in output
    log = (tmp_path / "runs" / "tiny-train" / "resumes.jsonl").read_text()
    resumes = [json.loads(line) for line in log.splitlines()]
    assert resumes[-1]["changed"] == {"train.steps": {"was": 2, "now": 3}}  # --quiet then not: no change
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), output  # Lightning's lines once, not again through its own handler
    assert "GPU available: False" in output and "INFO: " not in output
    for notice in ("weights_only", "not resumable", "Training: ", "site-packages/lightning", "Warning"):
        assert notice not in output, output
