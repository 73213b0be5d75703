"""Comparison recipes a reviewer can trust: fresh training data, a test split, seeds with Student-t
intervals, a memorisation flag, a report that survives a killed comparison, one progress line per step."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from test_training_run import KillAt, Killed, fit, tiny_config

from seqarch.data import build_data
from seqarch.data.fresh import CHUNK_EXAMPLES, FreshExamples
from seqarch.data.mqar import multiquery_ar
from seqarch.training.checkpoints import check_checkpoint
from seqarch.training.compare import compare, run_folder_of, summarise
from seqarch.training.config import ConfigError, validate
from seqarch.training.datamodule import StepBatchSampler
from seqarch.training.progress import ProgressLine
from seqarch.training.report import notes
from seqarch.training.stats import mean_interval, t_quantile

SHAPE = {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2, "power_a": 0.01, "random_non_queries": True}


def _batch(stream: FreshExamples, step: int, batch_size: int = 8) -> torch.Tensor:
    indices = StepBatchSampler(None, batch_size, 100, seed=0).global_batch(step)
    return torch.stack([stream[i][0] for i in indices])


def test_fresh_examples_are_fixed_by_seed_and_step_and_never_repeat():
    stream = FreshExamples(multiquery_ar, SHAPE, seed=3)
    first = _batch(stream, 5)
    # Another process (another cache history: a later chunk first) gets the same batch of step 5.
    other = FreshExamples(multiquery_ar, SHAPE, seed=3)
    other[10 * CHUNK_EXAMPLES]
    assert torch.equal(_batch(other, 5), first)
    assert not torch.equal(_batch(stream, 6), first)
    assert not torch.equal(_batch(stream.reseeded(4), 5), first)
    # Steps across a chunk boundary hold distinct examples: nothing is read twice.
    rows = {tuple(x.tolist()) for step in range(2 * CHUNK_EXAMPLES // 8) for x in _batch(stream, step)}
    assert len(rows) == 2 * CHUNK_EXAMPLES
    with pytest.raises(TypeError, match="no length"):
        len(stream)


def test_synthetic_tasks_give_fresh_training_data_and_three_disjoint_splits():
    for task in ("mqar", "selective_copy", "induction"):
        bundle = build_data({"task": task, "num_test": 16, "num_val": 8}, seed=0)
        assert bundle.fresh_train and (len(bundle.val), len(bundle.test)) == (8, 16)
        assert not torch.equal(bundle.val.tensors[0], bundle.test.tensors[0][:8])
        assert not torch.equal(bundle.train[0][0], bundle.val.tensors[0][0])
        finite = build_data({"task": task, "num_train": 32, "num_test": 16}, seed=0)
        assert not finite.fresh_train and len(finite.train) == 32 and len(finite.val) == 16
    with pytest.raises(ValueError, match="data.num_train"):
        build_data({"task": "mqar", "num_train": 0}, seed=0)


def test_resume_on_fresh_data_is_exact(tmp_path):
    config = tiny_config(steps=8, eval_every=4, checkpoint_every=4)
    config = validate({**config.to_dict(), "data": {"task": "mqar", "num_test": 32, "seq_len": 32}})
    whole = fit(config, tmp_path / "whole")
    with pytest.raises(Killed):
        fit(config, tmp_path / "killed", callbacks=[KillAt(6)])
    resumed = fit(config, tmp_path / "killed", resume=True)
    final = [check_checkpoint(tmp_path / d / "checkpoints" / "step-0000008.ckpt")["state_dict"]
             for d in ("whole", "killed")]
    assert all(torch.equal(value, final[1][name]) for name, value in final[0].items())
    assert (resumed.final, resumed.test, resumed.train_data) == (whole.final, whole.test, "fresh")
    assert whole.test is not None and whole.train_final is not None
    assert "train_eval/accuracy" in whole.history[-1]


def test_student_t_quantiles_and_intervals_on_known_numbers():
    # Tables: t_{0.975, 1} = 12.706, t_{0.975, 2} = 4.303, t_{0.975, 4} = 2.776, t_{0.975, 30} = 2.042.
    for df, expected in ((1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (30, 2.0422725)):
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert t_quantile(0.025, 2) == pytest.approx(-4.3026527, abs=1e-6)
    interval = mean_interval([0.5, 0.6, 0.7])  # s = 0.1, n = 3
    assert interval.mean == pytest.approx(0.6) and interval.n == 3
    assert interval.half_width == pytest.approx(4.3026527 * 0.1 / math.sqrt(3), abs=1e-7)
    assert str(interval) == "0.6000 ± 0.2484"
    assert mean_interval([0.4]).half_width is None
    with pytest.raises(ValueError, match="values"):
        mean_interval([])
    with pytest.raises(ValueError, match="p: expected a probability"):
        t_quantile(1.0, 3)


def _run(lr: float, seed: int, final: float, test: float, train_final: float | None = None):
    from seqarch.models import ModelConfig
    from seqarch.training.result import RunResult

    config = ModelConfig.from_dict({"vocab_size": 8, "d_model": 8, "n_layers": 1})
    result = RunResult.failed("m", config, lr=lr, metric="val/accuracy", higher_is_better=True, params=1,
                              flops_per_token=1.0, folder=f"lr{lr}/seed{seed}", failure="", seed=seed)
    return dataclasses.replace(result, failure=None, final=final, best=final, test=test,
                               train_final=final if train_final is None else train_final, steps=10)


def test_seeds_are_aggregated_and_the_lr_is_chosen_on_validation_not_test():
    from seqarch.data import ACCURACY

    runs = [_run(1e-3, s, final, test) for s, (final, test) in enumerate([(0.5, 0.9), (0.6, 0.9), (0.7, 0.9)])]
    runs += [_run(3e-3, s, final, test) for s, (final, test) in enumerate([(0.8, 0.1), (0.8, 0.2), (0.8, 0.3)])]
    result = summarise(runs, ACCURACY)
    assert result.lr == 3e-3 and [r.seed for r in result.seed_runs] == [0, 1, 2]
    assert result.test == pytest.approx(0.2) and result.final == pytest.approx(0.8)
    assert [(p.lr, p.final) for p in result.sweep] == [(1e-3, pytest.approx(0.6)), (3e-3, pytest.approx(0.8))]
    from seqarch.training.report import table_rows

    row = table_rows([result])[0]
    assert "0.2000 ± 0.2484" in row and row[9] == "3"


def test_memorisation_is_flagged_above_the_stated_gap():
    memorised = _run(1e-3, 0, final=0.26, test=0.25, train_final=0.96)
    honest = _run(1e-3, 0, final=0.46, test=0.45, train_final=0.47)
    lines = notes([memorised, honest], "val/accuracy")
    assert len(lines) == 1 and "memorised" in lines[0] and "0.9600" in lines[0] and "> 0.05" in lines[0]


def test_run_folders_never_collide_and_close_learning_rates_are_refused(tmp_path):
    config = tiny_config(lr=[1e-3, 3e-3], seeds=[0, 1])
    folders = {run_folder_of(tmp_path, "a", lr, seed, config.train) for lr in (1e-3, 3e-3) for seed in (0, 1)}
    assert len(folders) == 4 and tmp_path / "a" / "lr-0.003" / "seed-1" in folders
    assert run_folder_of(tmp_path, "a", 1e-3, 0, tiny_config().train) == tmp_path / "a" / "run"
    with pytest.raises(ConfigError, match="train.lr: expected learning rates that differ"):
        tiny_config(lr=[1e-3, 1.0000001e-3])
    with pytest.raises(ConfigError, match="train.seeds: expected distinct seeds"):
        tiny_config(seeds=[1, 1])


def test_a_killed_comparison_keeps_finished_runs_and_resume_trains_only_the_rest(tmp_path):
    config = validate({**tiny_config(steps=4, eval_every=2, checkpoint_every=2, seeds=[0, 1]).to_dict(),
                       "architectures": ["s4d", "attention"]}, command="compare")
    bundle = build_data(config.data.spec(), seed=0)
    reports = []
    with pytest.raises(Killed):  # killed in its third run (attention, seed 0), after two finished
        compare(config, bundle, tmp_path, callbacks=lambda name, index: [KillAt(3)] if index == 2 else [],
                on_run=lambda so_far: reports.append([(r.name, len(r.seed_runs)) for r in so_far]))
    assert reports == [[("s4d", 1)], [("s4d", 2)]]
    trained = []

    class Count(KillAt):
        def on_train_start(self, trainer, pl_module):
            trained.append(trainer.global_step)

    results = compare(config, bundle, tmp_path, resume=True, callbacks=lambda name, index: [Count(10**9)])
    assert trained == [2, 0]  # attention seed 0 from its step-2 checkpoint, then seed 1; s4d not at all
    assert [(r.name, [s.seed for s in r.seed_runs]) for r in results] == [("s4d", [0, 1]), ("attention", [0, 1])]
    assert json.loads((tmp_path / "s4d" / "run" / "seed-1" / "result.json").read_text())["seed"] == 1


def test_the_progress_line_prints_each_step_once(tmp_path):
    progress = ProgressLine("s4d (architecture 1/2, seed 0)", 1, 4, 12, "val/accuracy", every_s=0.0, eval_every=6)
    fit(tiny_config(steps=12), tmp_path / "run", callbacks=[progress])
    steps = [line.split("  step ")[1].split("/")[0] for line in progress.lines[1:]]
    assert len(steps) == len(set(steps)) == 12, progress.lines
    at_eval = next(line for line in progress.lines if "  step 6/12" in line)
    assert "val/accuracy" in at_eval and ", all " in at_eval
    assert progress.lines[-1].startswith("[1/4] s4d (architecture 1/2, seed 0)  step 12/12") and " done in " in \
        progress.lines[-1] and "val/accuracy" in progress.lines[-1]


def test_the_report_states_early_stops_sweep_scores_and_budget_errors():
    from seqarch.data import ACCURACY
    from seqarch.training.report import TABLE_COLUMNS, table_rows
    from seqarch.training.result import BudgetResult

    runs = [_run(1e-3, 0, 0.5, 0.5), dataclasses.replace(_run(3e-3, 0, 0.9, 0.8), stopped_early=True, steps=6)]
    result = summarise(runs, ACCURACY)
    result.budget = BudgetResult("params", 1000.0, 1012.0, 0.012)
    lines = notes([result], "val/accuracy")
    assert "- m stopped early at step 6: val/accuracy reached train.stop_at" in lines
    assert ("- m learning-rate sweep: lr 0.001: best 0.5000, final 0.5000, lr 0.003: best 0.9000, final 0.9000"
            in lines)
    row = dict(zip(TABLE_COLUMNS, table_rows([result])[0]))
    assert row["budget error"] == "+1.20%" and row["steps"] == "6 (stopped early)" and row["lr"] == "0.003"
    assert dict(zip(TABLE_COLUMNS, table_rows([_run(1e-3, 0, 0.5, 0.5)])[0]))["budget error"] == "-"


def test_the_state_plot_marks_early_stops_and_its_labels_and_ticks_never_overlap():
    import matplotlib.pyplot as plt

    from seqarch.training.plots import accuracy_vs_state_figure

    # Neighbours at one state size, two at accuracy 0 (by the tick labels), one stopped early.
    points = [(30000, 0.0), (32000, 0.0), (40000, 0.02), (41000, 0.5), (45000, 1.0), (45000, 0.98)]
    results = [dataclasses.replace(_run(1e-3, 0, acc, acc), name=f"arch{i}", state_size=size, stopped_early=i == 4)
               for i, (size, acc) in enumerate(points)]
    fig = accuracy_vs_state_figure(results, chance=1 / 32)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    assert [(list(c.get_xdata()), list(c.get_ydata())) for c in crosses] == [([45000], [1.0])]
    assert any(line.get_label() == "chance (0.0312)" for line in ax.get_lines())
    assert "stopped early (stop_at reached)" in [t.get_text() for t in ax.get_legend().get_texts()]
    inside = ax.get_window_extent(renderer)
    labels = [text.get_window_extent(renderer) for text in ax.texts]
    assert len(labels) == 6
    assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1 for b in labels)
    assert not any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1:])
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticklabels(minor=True) if t.get_text()]
    assert not ticks  # minor ticks unlabelled: "3x10^4 4x10^4" never runs together
    shown = [t.get_window_extent(renderer) for t in ax.get_xticklabels()
             if t.get_text() and low <= t.get_position()[0] <= high]
    assert len(shown) >= 3 and not any(a.overlaps(b) for i, a in enumerate(shown) for b in shown[i + 1:])
    plt.close(fig)


def test_the_progress_line_counts_every_run_of_a_sweep(tmp_path, caplog):
    import logging

    import yaml

    from seqarch.training.cli import main

    config = {"name": "swept", "data": {"task": "mqar", "num_train": 64, "num_test": 16, "seq_len": 16},
              "model": {"d_model": 16}, "architectures": ["s4d"], "trainer": {"accelerator": "cpu"},
              "sweep": {"data": [{"seq_len": 16}, {"seq_len": 24}]},
              "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "warmup_steps": 1}}
    (tmp_path / "swept.yaml").write_text(yaml.safe_dump(config))
    caplog.set_level(logging.INFO)
    assert main(["compare", str(tmp_path / "swept.yaml"), "--output", str(tmp_path)]) == 0
    assert "[1/2] s4d  training 2 steps" in caplog.text and "[2/2] s4d  training 2 steps" in caplog.text
