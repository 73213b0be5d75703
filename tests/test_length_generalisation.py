"""Length generalisation (``data.test_lengths``): test sets at other lengths than the training one, their
checks, the evaluation of the final model on each, the seed means and the report's table and plot."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from seqarch.data import build_data
from seqarch.data.mqar import lookup_solver
from seqarch.data.synthetic import induction_solver, selective_copy_solver
from seqarch.losses import IGNORE_INDEX
from seqarch.models import LanguageModel
from seqarch.training.cli import main
from seqarch.training.compare import plan_comparison
from seqarch.training.config import TrainSection, validate
from seqarch.training.datamodule import SeqarchDataModule
from seqarch.training.errors import ConfigError
from seqarch.training.result import RunResult

TASKS = {
    "induction": ({"vocab_size": 12, "seq_len": 16}, induction_solver),
    "selective_copy": ({"vocab_size": 10, "seq_len": 16, "num_tokens": 4},
                       lambda inputs: selective_copy_solver(inputs, num_tokens=4)),
    "mqar": ({"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 4},
             lambda inputs: lookup_solver(inputs, num_kv_pairs=4)),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_length_gets_its_own_seeded_test_set_that_the_task_solver_solves(task):
    options, solver = TASKS[task]
    spec = {"task": task, **options, "num_test": 24, "test_lengths": [64, 32]}
    bundle = build_data(spec, seed=3)
    assert list(bundle.length_tests) == [32, 64] and bundle.info["test_lengths"] == [32, 64]  # sorted
    again = build_data(spec, seed=3)
    for length, dataset in bundle.length_tests.items():
        inputs, targets = dataset.tensors
        assert inputs.shape == targets.shape == (24, length) and inputs.dtype == torch.long
        assert torch.equal(inputs, again.length_tests[length].tensors[0])  # the same seed: the same examples
        scored = targets != IGNORE_INDEX
        assert scored.any() and torch.equal(solver(inputs)[scored], targets[scored])  # the task, at that length
    # Its own stream: not the main test split of a run trained at that length, not another seed's.
    at_32 = build_data({**spec, "seq_len": 32, "test_lengths": [16]}, seed=3)
    assert not torch.equal(bundle.length_tests[32].tensors[0], at_32.test.tensors[0])
    assert not torch.equal(bundle.length_tests[32].tensors[0], build_data(spec, seed=4).length_tests[32].tensors[0])
    assert build_data({**spec, "test_lengths": None}, seed=3).length_tests == {}


@pytest.mark.parametrize("spec, message", [
    ({"task": "induction", "test_lengths": [64.0]}, r"data.test_lengths\[0\]: expected an integer, got 64.0"),
    ({"task": "induction", "test_lengths": [64, True]}, r"data.test_lengths\[1\]: expected an integer, got True"),
    ({"task": "induction", "test_lengths": [0]}, r"data.test_lengths\[0\]: expected an integer >= 3, got 0"),
    ({"task": "induction", "test_lengths": [-8]}, r"data.test_lengths\[0\]: expected an integer >= 3, got -8"),
    ({"task": "induction", "test_lengths": 64}, "data.test_lengths: expected a list of sequence lengths, got 64"),
    ({"task": "induction", "test_lengths": [64, 128, 64]}, "data.test_lengths: expected distinct lengths, got 64"),
    ({"task": "induction", "seq_len": 30, "test_lengths": [60, 30]},
     r"data.test_lengths\[1\]: expected lengths other than data.seq_len=30"),
    ({"task": "selective_copy", "num_tokens": 16, "test_lengths": [512, 20]},
     r"data.test_lengths\[1\]: expected an integer >= 32, got 20"),
    ({"task": "mqar", "num_kv_pairs": 8, "test_lengths": [16]},
     r"data.test_lengths\[0\]: expected >= 4 \* num_kv_pairs = 32"),
    ({"task": "listops", "test_lengths": [512]},
     "data.test_lengths: task 'listops' cannot take it; only the synthetic lm tasks"),
    ({"task": "mad_in_context_recall", "test_lengths": [512]}, "data.test_lengths: task 'mad_in_context_recall'"),
])
def test_bad_test_lengths_are_refused_naming_the_argument(spec, message):
    with pytest.raises(ValueError, match=message):
        build_data({"num_test": 8, **spec}, seed=0)


def test_long_test_batches_hold_no_more_tokens_than_a_training_batch():
    bundle = build_data({"task": "induction", "seq_len": 16, "num_test": 10, "test_lengths": [64, 8]}, seed=0)
    datamodule = SeqarchDataModule(bundle, TrainSection(steps=2, batch_size=8))
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=1)
    assert datamodule.test_splits() == ["test", "test@8", "test@64"]
    loaders = datamodule.test_dataloader()
    assert [loader.batch_size for loader in loaders] == [8, 16, 2]
    assert [len(loader.dataset) for loader in loaders] == [10, 10, 10]


def tiny_plan(architectures, **model):
    config = validate({"data": {"task": "induction", "vocab_size": 8, "seq_len": 16, "num_test": 4,
                                "test_lengths": [64]},
                       "model": {"d_model": 16, "n_layers": 1, **model}, "architectures": architectures})
    bundle = build_data(config.data.spec(), seed=0)
    return plan_comparison(config, bundle), bundle


def test_mixers_run_at_four_times_the_training_length_or_are_refused_before_training():
    # Attention (rotary positions for any length), the diagonal SSM and the selective scans take any length.
    plan, bundle = tiny_plan(["transformer", "s4d", "mamba", {"name": "mamba2", "preset": "mamba2",
                                                               "mixer_options": {"head_dim": 8}},
                              {"name": "hyena", "preset": "hyena", "max_length": 64}])
    inputs = bundle.length_tests[64].tensors[0]
    for name, model_config, _ in plan:
        torch.manual_seed(0)
        with torch.no_grad():
            logits = LanguageModel(model_config)(inputs)
        assert logits.shape == (4, 64, model_config.vocab_size) and torch.isfinite(logits).all(), name
    # Hyena's implicit filters are positioned by max_length (the training length unless set): refused, not resized.
    for architecture in ("hyena", "s4"):
        with pytest.raises(ConfigError, match=r"data.test_lengths: expected lengths of at most 16, .* got 64; "
                                              r"set model.max_length: 64"):
            tiny_plan(["s4d", architecture])


def test_compare_reports_every_length_over_seeds_and_resume_keeps_them(tmp_path):
    config = {"name": "lengths", "data": {"task": "induction", "vocab_size": 8, "seq_len": 16, "num_test": 16,
                                          "test_lengths": [32, 64]},
              "model": {"d_model": 8, "n_layers": 1}, "architectures": ["transformer", "mamba"],
              "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 1,
                        "seeds": [0, 1]}}
    path = tmp_path / "lengths.yaml"
    path.write_text(json.dumps(config))
    assert main(["compare", str(path), "--output", str(tmp_path), "--quiet"]) == 0
    folder = tmp_path / "lengths"
    results = json.loads((folder / "results.json").read_text())["results"]
    assert [r["name"] for r in results] == ["transformer", "mamba"]
    for r in results:
        seeds = [run["test_lengths"] for run in r["seed_runs"]]
        assert len(seeds) == 2 and all(set(s) == {"32", "64"} and all(0 <= v <= 1 for v in s.values())
                                       for s in seeds)
        for length in ("32", "64"):
            assert r["test_lengths"][length] == pytest.approx((seeds[0][length] + seeds[1][length]) / 2)
        one = json.loads((folder / r["name"] / "run" / "seed-1" / "result.json").read_text())
        assert one["test_lengths"] == seeds[1]
    report = (folder / "report.md").read_text()
    assert "| architecture | 16 (trained) | 32 | 64 |" in report
    transformer_row = next(line for line in report.splitlines() if line.startswith("| transformer | ")
                           and line.count("|") == 5)
    assert transformer_row.count("±") == 3  # mean ± half-width over the two seeds, in every column
    assert "![test metric against sequence length](length_generalisation.png)" in report
    assert "and on 16 held-out examples at each of the lengths 32, 64" in report
    assert (folder / "length_generalisation.png").read_bytes()[:4] == b"\x89PNG"
    # A resume of the finished comparison trains nothing and keeps every value.
    assert main(["compare", str(path), "--output", str(tmp_path), "--quiet", "--resume"]) == 0
    assert json.loads((folder / "results.json").read_text())["results"] == results
    # A resume with a test length added tests the finished runs' final models there, training nothing.
    checkpoints = sorted(p.name for p in folder.rglob("*.ckpt"))
    assert main(["compare", str(path), "--output", str(tmp_path), "--quiet", "--resume",
                 "data.test_lengths=[32, 64, 48]"]) == 0
    extended = json.loads((folder / "results.json").read_text())["results"]
    for before, after in zip(results, extended):
        assert after["history"] == before["history"] and after["steps"] == before["steps"]
        for old_run, new_run in zip(before["seed_runs"], after["seed_runs"]):
            assert {k: new_run["test_lengths"][k] for k in ("32", "64")} == old_run["test_lengths"]
            assert 0 <= new_run["test_lengths"]["48"] <= 1
    assert sorted(p.name for p in folder.rglob("*.ckpt")) == checkpoints
    assert "| architecture | 16 (trained) | 32 | 48 | 64 |" in (folder / "report.md").read_text()
    # A result.json written before test lengths existed still reads (no values).
    old = {k: v for k, v in json.loads((folder / "mamba" / "run" / "seed-0" / "result.json").read_text()).items()
           if k != "test_lengths"}
    assert RunResult.from_dict(old).test_lengths == {}
