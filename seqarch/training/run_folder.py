"""Run folders that different jobs never share, and resumes that never mix two configs.

``seqarch compare``, ``mad`` and ``scale`` write ``output/name``, ``seqarch train`` ``output/name-train``;
the folder records the command that made it (``made_by.json``) and a resume by another command is
refused, so two commands of one config never write into one folder. A folder that holds anything is never written into
without ``--resume``; ``--resume`` needs the config the run saved there (``config.yaml``) and refuses
a config whose model, data or recipe differs from it, naming the keys. Keys that only say how long,
how often or where to train (``RESUMABLE_KEYS``) may change on resume: they are applied and recorded
in ``resumes.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .config import SAVED_CONFIG, RunConfig, parse_yaml
from .durable import write_atomic
from .errors import ConfigError

log = logging.getLogger(__name__)

# Dotted keys (or section prefixes) that may differ between a run and its resume.
RESUMABLE_KEYS = (
    "train.steps", "train.eval_every", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.stop_at", "train.num_workers", "train.seeds", "train.eval_batches", "trainer.", "logger", "wandb.",
    "output", "imports", "slurm.",
    # Test sets at other lengths are read only after training: a finished run resumed with new ones is
    # tested there from its final checkpoint (seqarch.training.run.test_finished_run).
    "data.test_lengths",
)
RESUME_LOG = "resumes.jsonl"
MADE_BY = "made_by.json"  # which command made the folder: a resume by another one is refused
# Keys that say only how a run is shown (--quiet sets trainer.enable_progress_bar): never a change of the run.
DISPLAY_KEYS = ("trainer.enable_progress_bar",)


class RunFolderError(ConfigError):
    """A run folder that this command may not write into (or resume from); the message says why."""


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists are leaves)."""
    if not isinstance(values, dict):
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def config_differences(saved: dict, current: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """``(refused, allowed)``: the keys whose values differ, ``key: (saved, current)``, split by
    whether a resume may change them (display options, ``DISPLAY_KEYS``, are neither)."""
    before, after = flatten(saved), flatten(current)
    refused, allowed = {}, {}
    for key in sorted(set(before) | set(after)):
        if key not in DISPLAY_KEYS and before.get(key) != after.get(key):
            (allowed if _resumable(key) else refused)[key] = (before.get(key), after.get(key))
    return refused, allowed


def _describe(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{key} was {old!r}, now {new!r}" for key, (old, new) in changes.items())


def check_run_folder(folder: Path, config: RunConfig, command: str, *, resume: bool) -> dict[str, tuple]:
    """Refuse a folder this run may not write into; returns the resumable keys that changed (on resume).

    Raises :class:`RunFolderError` before anything is written.
    """
    if not resume:
        if folder.exists() and any(folder.iterdir()):
            raise RunFolderError(
                f"output: {str(folder)!r} already holds a run; pass --resume to continue it, or choose another "
                "--name or --output (nothing is written over)"
            )
        return {}
    saved_path = folder / SAVED_CONFIG
    if not saved_path.is_file():
        raise RunFolderError(
            f"--resume: no run to resume in {str(folder)!r} (no {SAVED_CONFIG} there); seqarch {command} writes "
            f"{str(config.folder_for(command))!r} for this config: check --name and --output, or drop --resume"
        )
    made_by = folder_command(folder)
    if made_by is not None and made_by != command:
        raise RunFolderError(
            f"--resume: the run in {str(folder)!r} was made by seqarch {made_by}, not seqarch {command}; resume it "
            f"with seqarch {made_by}, or give this one another --name (two commands never share a run folder)"
        )
    try:
        saved = parse_yaml(saved_path.read_text()) or {}
    except ValueError as error:  # ConfigError from parse_yaml: a damaged file
        raise RunFolderError(f"--resume: {str(saved_path)!r} cannot be read ({error})") from error
    refused, allowed = config_differences(saved, config.to_dict())
    if refused:
        raise RunFolderError(
            f"--resume: the run in {str(folder)!r} was made with another model, data or recipe: {_describe(refused)}; "
            "resume with the config it was started with, or start a new run under another --name"
        )
    if allowed:
        log.info("--resume: applying %s", _describe(allowed))
    return allowed


def record_command(folder: Path, command: str) -> None:
    """Write which command (``train``, ``compare``, ``mad``, ``scale``) made the run folder."""
    write_atomic(folder / MADE_BY, json.dumps({"command": command}) + "\n")


def folder_command(folder: Path) -> str | None:
    """The command that made ``folder`` (:func:`record_command`); for a folder written before that was
    recorded, what its files say (``mad.json``, ``scale.json``; ``results.json`` beside ``checkpoints/``
    is a train run's, without it a comparison's), else ``None``."""
    try:
        return str(json.loads((folder / MADE_BY).read_text())["command"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for name, command in (("mad.json", "mad"), ("scale.json", "scale")):
        if (folder / name).is_file():
            return command
    if (folder / "results.json").is_file():
        return "train" if (folder / "checkpoints").is_dir() else "compare"
    return None


def record_resume(folder: Path, changes: dict[str, tuple]) -> None:
    """Append one line per resume to ``resumes.jsonl``: when, and the keys it changed."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "changed": {key: {"was": old, "now": new} for key, (old, new) in changes.items()}}
    with (folder / RESUME_LOG).open("a") as log_file:
        log_file.write(json.dumps(entry, default=str) + "\n")


def read_resumes(folder: Path) -> list[dict]:
    """The entries :func:`record_resume` wrote (none for a run never resumed)."""
    path = folder / RESUME_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_fingerprint(path: Path, saved: dict, current: dict) -> None:
    """Refuse to resume from the checkpoint ``path`` made by another model or recipe
    (``saved``/``current``: :func:`seqarch.training.module.run_fingerprint`'s data)."""
    saved_train = {f"train.{k}": v for k, v in flatten(saved.get("train", {})).items()}
    current_train = {f"train.{k}": v for k, v in flatten(current.get("train", {})).items()}
    refused, _ = config_differences(
        {**{f"model.{k}": v for k, v in flatten(saved.get("model_config", {})).items()}, **saved_train,
         "kind": saved.get("kind"), "lr": saved.get("lr"), "seq_len": saved.get("seq_len")},
        {**{f"model.{k}": v for k, v in flatten(current["model_config"]).items()}, **current_train,
         "kind": current["kind"], "lr": current["lr"], "seq_len": current["seq_len"]},
    )
    if refused:
        raise RunFolderError(
            f"--resume: checkpoint {str(path)!r} was made by another model or recipe: {_describe(refused)}; "
            "resume with the config it was started with, or start a new run under another --name"
        )
