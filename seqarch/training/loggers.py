"""Loggers: a CSV log always; wandb when asked, offline without credentials, never fatal.

A logging failure (no network, a full disk on the wandb side, a broken install)
is reported once through ``logging`` and the run goes on without that logger.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import re
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

log = logging.getLogger(__name__)


def wandb_mode(requested: str = "auto") -> str:
    """``online`` when credentials exist (``WANDB_API_KEY`` or a netrc entry), else ``offline``."""
    if requested in ("online", "offline", "disabled"):
        return requested
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return os.environ.get("WANDB_MODE", "online")
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


class FailSafeLogger(Logger):
    """Wraps a logger so that any exception it raises is logged once and then ignored."""

    def __init__(self, inner: Logger) -> None:
        super().__init__()
        self.inner = inner
        self.failed = False

    def _call(self, method: str, *args, **kwargs):
        if self.failed:
            return None
        try:
            return getattr(self.inner, method)(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a logger must never stop training
            self.failed = True
            log.warning("logger %s failed (%s: %s); training continues without it",
                        type(self.inner).__name__, type(error).__name__, error)
            return None

    @property
    def name(self):
        return self.inner.name

    @property
    def version(self):
        return self.inner.version

    @property
    def save_dir(self):
        return getattr(self.inner, "save_dir", None)

    def log_metrics(self, metrics, step=None):
        self._call("log_metrics", metrics, step)

    def log_hyperparams(self, params, *args, **kwargs):
        self._call("log_hyperparams", params, *args, **kwargs)

    def save(self):
        self._call("save")

    def finalize(self, status):
        self._call("finalize", status)

    def after_save_checkpoint(self, checkpoint_callback):
        self._call("after_save_checkpoint", checkpoint_callback)


def csv_log_folder(run_dir: str | Path, resumed_from: int) -> str:
    """``logs`` for a fresh run; a resumed run writes ``logs-resumed-<step>`` beside it, because
    Lightning's CSV writer deletes an existing ``metrics.csv`` (the log before the kill would be lost).
    A folder of that name that already holds a log (a run resumed twice from one checkpoint, or restarted
    at step 0 after a kill before its first checkpoint) gets ``-2``, ``-3``, ... after the name."""
    base = "logs" if resumed_from == 0 else f"logs-resumed-{resumed_from:07d}"
    name, attempt = base, 1
    while (folder := Path(run_dir) / name).is_dir() and any(folder.iterdir()):
        attempt += 1
        name = f"{base}-{attempt}"
    return name


def _log_order(folder: Path) -> tuple[int, int, int]:
    # logs < logs-2 < logs-resumed-0000004 < logs-resumed-0000004-2 < logs-resumed-0000004-10
    match = re.fullmatch(r"logs(?:-resumed-(\d+))?(?:-(\d+))?", folder.name)
    if match is None:
        return (1, 0, 0)
    return (0, int(match.group(1) or -1), int(match.group(2) or 1))


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    """The run's CSV rows across resumes, by step; a later log's row replaces an earlier one's."""
    run_dir = Path(run_dir)
    rows: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
    for folder in sorted(run_dir.glob("logs*"), key=_log_order):
        path = folder / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                filled = {k: v for k, v in row.items() if v not in ("", None)}
                rows[(filled.get("step", ""), tuple(sorted(k for k in filled if k != "step")))] = filled
    return sorted(rows.values(), key=lambda r: int(float(r.get("step", 0))))


def build_loggers(kind: str, run_dir: Path, run_name: str, wandb_options: dict, *,
                  resumed_from: int = 0) -> list[Logger]:
    """The CSV logger (``run_dir/logs*/metrics.csv``) plus wandb when ``kind == "wandb"``."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version=csv_log_folder(run_dir, resumed_from))]
    if kind == "wandb":
        try:
            from lightning.pytorch.loggers import WandbLogger

            mode = wandb_mode(wandb_options.get("mode", "auto"))
            inner = WandbLogger(project=wandb_options.get("project"), entity=wandb_options.get("entity"),
                                name=run_name, save_dir=str(run_dir), mode=mode)
            loggers.append(FailSafeLogger(inner))
        except Exception as error:  # noqa: BLE001 - a missing or broken wandb must not stop the run
            log.warning("wandb logger unavailable (%s: %s); logging to CSV only", type(error).__name__, error)
    return loggers
