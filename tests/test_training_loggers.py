"""Logging: CSV always, wandb offline without credentials, and a failing logger never stops training."""

from __future__ import annotations

from lightning.pytorch.loggers import Logger

from seqarch.data import build_data
from seqarch.training import loggers
from seqarch.training.config import validate
from seqarch.training.loggers import FailSafeLogger, csv_log_folder, read_metrics, wandb_mode
from seqarch.training.run import model_config_for, train_run


def test_wandb_is_offline_without_credentials(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    assert wandb_mode("disabled") == "disabled"


class BrokenLogger(Logger):
    calls = 0

    @property
    def name(self):
        return "broken"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        raise ConnectionError("no network")

    def log_metrics(self, metrics, step=None):
        BrokenLogger.calls += 1
        raise ConnectionError("no network")


def test_a_failing_logger_never_stops_training(tmp_path, monkeypatch, caplog):
    original = loggers.build_loggers

    def with_broken(*args, **kwargs):
        return [*original(*args, **kwargs), FailSafeLogger(BrokenLogger())]

    monkeypatch.setattr("seqarch.training.run.build_loggers", with_broken)
    config = validate({"data": {"task": "mqar", "num_train": 64, "num_test": 16, "seq_len": 32},
                       "model": {"d_model": 16}, "train": {"steps": 4, "batch_size": 8, "eval_every": 2,
                                                           "log_every": 1, "checkpoint_every": 4},
                       "trainer": {"enable_progress_bar": False, "accelerator": "cpu"}})
    bundle = build_data(config.data.spec(), seed=0)
    result = train_run(config, bundle, model_config_for(config, bundle), lr=1e-3, folder=tmp_path / "run")
    assert result.steps == 4
    assert "logger BrokenLogger failed (ConnectionError: no network)" in caplog.text
    steps = {int(r["step"]) for r in read_metrics(tmp_path / "run") if "train/loss" in r}
    assert steps == {0, 1, 2, 3}


def test_resumed_logs_go_beside_the_first(tmp_path):
    assert csv_log_folder(tmp_path, 0) == "logs" and csv_log_folder(tmp_path, 40) == "logs-resumed-0000040"
    for folder, rows in (("logs", "step,train/loss\n0,3.0\n1,2.0\n2,1.5\n"),
                         ("logs-resumed-0000001", "step,train/loss\n1,2.0\n2,1.4\n3,1.0\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.csv").write_text(rows)
    merged = [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)]
    assert merged == [("0", "3.0"), ("1", "2.0"), ("2", "1.4"), ("3", "1.0")]
    # A second resume from one checkpoint writes beside the first; the later log wins, in number order.
    assert csv_log_folder(tmp_path, 0) == "logs-2" and csv_log_folder(tmp_path, 1) == "logs-resumed-0000001-2"
    for attempt, loss in ((2, "0.9"), (10, "0.5")):
        (tmp_path / f"logs-resumed-0000001-{attempt}").mkdir()
        (tmp_path / f"logs-resumed-0000001-{attempt}" / "metrics.csv").write_text(f"step,train/loss\n3,{loss}\n")
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)][-1] == ("3", "0.5")


def test_read_metrics_of_a_folder_without_logs_is_empty(tmp_path):
    assert read_metrics(tmp_path / "nowhere") == []
