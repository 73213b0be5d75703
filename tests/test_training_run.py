"""Training end to end on the CPU: MQAR is learned, budgets match, resume is exact,
DDP equals one process, a NaN stops the run and keeps the checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from seqarch.budget import count_params, training_flops
from seqarch.data import build_data
from seqarch.modules.mlp import default_hidden
from seqarch.training.checkpoints import check_checkpoint, list_checkpoints
from seqarch.training.cli import main
from seqarch.training.compare import plan_comparison, run_tokens
from seqarch.training.config import RunConfig, validate
from seqarch.training.loggers import read_metrics
from seqarch.training.module import NonFiniteLossError, SeqarchModule
from seqarch.training.result import RunResult
from seqarch.training.run import model_config_for, train_run

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**train) -> RunConfig:
    return validate({
        "name": "tiny", "data": {"task": "mqar", "num_train": 256, "num_test": 64, "seq_len": 32},
        "model": {"d_model": 16, "mixer": "s4d"},
        "train": {"steps": 12, "batch_size": 8, "eval_every": 6, "log_every": 1, "checkpoint_every": 4,
                  "warmup_steps": 2, **train},
        "trainer": {"enable_progress_bar": False, "accelerator": "cpu"},
    })


def fit(config: RunConfig, folder: Path, **kwargs) -> RunResult:
    bundle = build_data(config.data.spec(), seed=config.train.seed)
    return train_run(config, bundle, model_config_for(config, bundle), lr=3e-3, folder=folder, **kwargs)


def train_losses(folder: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in read_metrics(folder) if r.get("train/loss")}


def test_attention_learns_mqar_to_099():
    """Zoology's smallest example at half its length (fewer steps, a shorter suite): a 2-layer
    attention model of width 64 solves MQAR."""
    config = validate({
        "data": {"task": "mqar", "vocab_size": 256, "seq_len": 32, "num_kv_pairs": 4},
        "model": {"d_model": 64, "n_layers": 2, "mixer": "attention"},
        "train": {"steps": 1200, "batch_size": 64, "lr": 3e-3, "eval_every": 100, "stop_at": 0.99},
        "trainer": {"enable_progress_bar": False, "accelerator": "cpu"}, "logger": "csv",
    })
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        result = fit(config, Path(folder))
    assert result.best >= 0.99, result.history


def test_compare_budgets_within_two_percent():
    for budget in ({"params": 60000}, {"flops": 1e13}):
        config = validate({"data": {"task": "mqar"}, "architectures": ["attention", "s4d", "s4", "m2", "hyena"],
                           "budget": budget, "model": {"d_model": 32}}, command="compare")
        bundle = build_data(config.data.spec(), seed=0)
        plan = plan_comparison(config, bundle)
        assert [name for name, _, _ in plan] == ["attention", "s4d", "s4", "m2", "hyena"]
        # The m2 preset is Monarch Mixer: its Monarch MLP is resized in steps of its blocks.
        m2, hyena = plan[3][1], plan[4][1]
        m2_hidden = m2.d_ff or default_hidden("monarch", m2.d_model)
        assert (m2.mixer, m2.channel_mixer, m2_hidden % m2.monarch_blocks) == ("m2", "monarch", 0)
        assert (hyena.mixer, hyena.channel_mixer) == ("hyena", "glu")
        for _, model_config, match in plan:
            if "params" in budget:
                achieved = count_params(model_config)
                assert abs(achieved - budget["params"]) <= 0.02 * budget["params"]
            else:
                # steps of (train.batch_size, seq_len): the kernels' once-per-step work counted once a step
                achieved = training_flops(model_config, bundle.seq_len, run_tokens(config, bundle),
                                          config.train.batch_size)
                assert abs(achieved - budget["flops"]) <= 0.02 * budget["flops"]
            assert abs(match.relative_error) <= 0.02


class Killed(Exception):
    """Stands for a killed process: nothing after it runs."""


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed


def test_resume_gives_the_uninterrupted_losses(tmp_path):
    config = tiny_config(lr=3e-3, steps=12)
    whole = fit(config, tmp_path / "whole")
    with pytest.raises(Killed):
        fit(config, tmp_path / "killed", callbacks=[KillAt(6)])
    assert [p.name for p in list_checkpoints(tmp_path / "killed" / "checkpoints")] == ["step-0000004.ckpt"]
    resumed = fit(config, tmp_path / "killed", resume=True)
    expected, got = train_losses(tmp_path / "whole"), train_losses(tmp_path / "killed")
    assert len(expected) == 12 and all(got[s] == expected[s] for s in range(4, 12)), (expected, got)
    final = [check_checkpoint(tmp_path / d / "checkpoints" / "step-0000012.ckpt")["state_dict"]
             for d in ("whole", "killed")]
    for name, value in final[0].items():
        assert torch.equal(value, final[1][name]), name
    assert resumed.final == whole.final
    assert resumed.steps == 12


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(steps=10, checkpoint_every=2)
    original = SeqarchModule._loss_and_counts

    def poisoned(self, batch):
        loss, scored, correct = original(self, batch)
        return (loss * float("nan") if self.global_step >= 5 and self.training else loss), scored, correct

    monkeypatch.setattr(SeqarchModule, "_loss_and_counts", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        fit(config, tmp_path / "run")
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in kept] == ["step-0000002.ckpt", "step-0000004.ckpt"]
    state = check_checkpoint(kept[-1])["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


DDP_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import lightning as L
    import torch
    from seqarch.data import build_data
    from seqarch.training.config import validate
    from seqarch.training.run import model_config_for, train_run

    class SaveWeights(L.Callback):
        def on_train_end(self, trainer, pl_module):
            torch.save(pl_module.model.state_dict(),
                       Path(sys.argv[1]) / f"rank{trainer.global_rank}-of-{trainer.world_size}.pt")

    devices = int(sys.argv[2])
    config = validate({
        "data": {"task": "mqar", "num_train": 128, "num_test": 32, "seq_len": 32},
        "model": {"d_model": 16, "mixer": "attention"},
        "train": {"steps": 4, "batch_size": 8, "eval_every": 4, "checkpoint_every": 4, "warmup_steps": 1},
        "trainer": {"accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
                    "enable_progress_bar": False},
    })
    bundle = build_data(config.data.spec(), seed=0)
    train_run(config, bundle, model_config_for(config, bundle), lr=3e-3,
              folder=Path(sys.argv[1]) / f"run{devices}", callbacks=[SaveWeights()])
""")


def test_ddp_two_cpu_processes_equal_one_process_on_the_global_batch(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for devices in (2, 1):
        done = subprocess.run([sys.executable, str(script), str(tmp_path), str(devices)], check=False, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}-of-2.pt") for r in (0, 1))
    single = torch.load(tmp_path / "rank0-of-1.pt")
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6)


def test_compare_writes_the_report_plots_csv_and_checkpoints(tmp_path, capsys):
    config = {"name": "cmp", "data": {"task": "mqar", "num_train": 128, "num_test": 32, "seq_len": 32},
              "model": {"d_model": 16}, "architectures": ["attention", "s4d"], "budget": {"params": 22000},
              "train": {"steps": 4, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "lr": [1e-3, 3e-3]}}
    path = tmp_path / "cmp.yaml"
    path.write_text(json.dumps(config))
    assert main(["compare", str(path), "--output", str(tmp_path), "--quiet"]) == 0
    folder = tmp_path / "cmp"
    results = json.loads((folder / "results.json").read_text())
    assert (results["metric"], results["higher_is_better"]) == ("val/accuracy", True)
    assert results["config"]["train"]["lr"] == [1e-3, 3e-3] and results["config"]["budget"]["params"] == 22000
    assert [r["name"] for r in results["results"]] == ["attention", "s4d"]
    assert [r["model_config"]["mixer"] for r in results["results"]] == ["attention", "s4d"]
    assert all(r["budget"]["metric"] == "params" and abs(r["budget"]["relative_error"]) <= 0.02
               for r in results["results"])
    for r in results["results"]:  # the learning rate whose final validation is best is the one kept
        assert r["final"] == max(point["final"] for point in r["sweep"]) and r["lr"] in (1e-3, 3e-3)
    assert yaml.safe_load((folder / "config.yaml").read_text())["architectures"][1]["preset"] == "s4d"
    for r in results["results"]:
        assert abs(r["params"] - 22000) <= 440 and r["best"] is not None and len(r["sweep"]) == 2
        assert r["training_flops"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0
    report = (folder / "report.md").read_text()
    assert "| attention |" in report and "| s4d |" in report
    # the FLOP convention and every parameter group's learning rate are stated
    assert "- FLOPs: analytic, per (batch, length) training step" in report and "attention causal" in report
    s4d_rates = next(line for line in report.splitlines() if line.startswith("- Learning rates of s4d"))
    s4d_lr = next(r["lr"] for r in results["results"] if r["name"] == "s4d")
    assert f"lr {0.5 * s4d_lr:.3g} (0.5 x lr), wd 0" in s4d_rates and f"lr {s4d_lr:.3g}, wd 0.1" in s4d_rates
    for png in ("metric_vs_flops.png", "accuracy_vs_state.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    for arch in ("attention", "s4d"):
        for lr in ("lr-0.001", "lr-0.003"):
            run = folder / arch / lr
            assert (run / "logs" / "metrics.csv").exists()
            assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-0000002.ckpt", "step-0000004.ckpt"]


def test_listops_classification_trains_through_the_same_path(tmp_path):
    config = validate({
        "data": {"task": "listops", "seq_len": 64, "num_train": 64, "num_test": 32},
        "model": {"d_model": 16, "mixer": "s4d", "causal": False},
        "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 6, "lr": 3e-3},
        "trainer": {"enable_progress_bar": False, "accelerator": "cpu"},
    })
    bundle = build_data(config.data.spec(), seed=0)
    assert bundle.kind == "classification" and bundle.num_classes == 10
    result = fit(config, tmp_path / "run")
    assert result.metric == "val/accuracy" and 0.0 <= result.best <= 1.0
    assert [h["step"] for h in result.history] == [3, 6]
    assert result.state_size == 0  # bidirectional: no recurrent state
    state = check_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000006.ckpt")
    assert any(k.startswith("model.head.") for k in state["state_dict"])


def test_cpu_training_memory_leaves_out_what_the_process_held_before(tmp_path):
    from seqarch.training.report import TABLE_COLUMNS, table_rows

    held = torch.ones(64 * 2**20)  # 256 MB, touched, alive through the run
    result = fit(tiny_config(steps=2, eval_every=2, checkpoint_every=2), tmp_path / "run")
    assert result.peak_memory_bytes > held.numel() * 4  # the whole process, the 256 MB included
    assert 0 < result.training_memory_bytes < 64 * 2**20  # what the training needed: far less
    row = dict(zip(TABLE_COLUMNS, table_rows([result])[0]))
    assert row["peak memory"] == table_rows([dataclasses.replace(result, peak_memory_bytes=1)])[0][-1]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["training_memory_bytes"] > 0


def test_each_run_records_the_load_it_trained_under_and_its_row_shows_it(tmp_path):
    from seqarch.training.report import TABLE_COLUMNS, table_rows

    result = fit(tiny_config(steps=2, eval_every=2, checkpoint_every=2), tmp_path / "run")
    assert result.load_average is not None and result.load_average >= 0
    assert dict(zip(TABLE_COLUMNS, table_rows([result])[0]))["load"] == f"{result.load_average:.1f}"
    assert dict(zip(TABLE_COLUMNS, table_rows([dataclasses.replace(result, load_average=None)])[0]))["load"] == "-"
