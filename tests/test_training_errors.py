"""Every config error is named before anything trains or is written: YAML syntax, types, devices,
budgets beyond any sane size."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seqarch.budget import MAX_PARAMS, match_budget
from seqarch.models import ModelConfig
from seqarch.training.cli import main

TINY = {"name": "tiny", "data": {"task": "mqar", "num_train": 64, "num_test": 32, "seq_len": 16},
        "model": {"d_model": 16, "mixer": "s4d"}, "architectures": ["s4d"],
        "train": {"steps": 2, "batch_size": 8, "eval_every": 2}}


def _run(tmp_path: Path, command: str, *overrides: str, text: str | None = None) -> int:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY) if text is None else text)
    return main([command, str(path), *overrides, "--output", str(tmp_path / "runs"), "--quiet"])


@pytest.mark.parametrize("overrides, message", [
    (["train=5"], "train: expected a valid dictionary"),
    (["train.stop_at=abc"], "train.stop_at: expected a valid number"),
    (["train.betas=abc"], "train.betas: expected a valid tuple"),
    (["train.lr=[1,"], "override 'train.lr=[1,': expected valid YAML, got a syntax error at line 1"),
    (["trainer.accelerator=gpu"], "trainer: Lightning cannot train with {'accelerator': 'gpu'"),
    (["trainer.devices=abc"], "trainer: Lightning cannot train with {'accelerator': 'auto', 'devices': 'abc'"),
    (["trainer.strategy=nope"], "invalid strategy name"),
    (["budget.params=1e11"], "params: expected a budget of at most 1e+10 parameters"),
    (["budget.flops=1e30", "architectures=[attention]"],
     "stopped by the largest size (d_model <= 8192 and d_ff within 0.75-1.25 x its preset ratio)"),
])
def test_bad_values_are_named_before_anything_is_written(tmp_path, caplog, overrides, message):
    assert _run(tmp_path, "compare", *overrides) == 2
    assert message in caplog.text
    assert not (tmp_path / "runs").exists()


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path, caplog):
    assert _run(tmp_path, "train", text="name: x\ntrain: {steps: 3\n") == 2
    assert f"config '{tmp_path / 'tiny.yaml'}': expected valid YAML, got a syntax error at line 3" in caplog.text
    assert "<unicode string>" not in caplog.text


def test_the_solver_refuses_sizes_beyond_its_bounds_without_building_them():
    config = ModelConfig(vocab_size=64, d_model=16, mixer="attention")
    with pytest.raises(ValueError, match="params: expected a budget of at most"):
        match_budget(config, params=MAX_PARAMS * 10, length=16)
    # d_ff at the top of its range (1.25 x the preset's), never 16 x d_model
    with pytest.raises(ValueError, match=r"the closest reaches .* at d_model=256, n_layers=2, d_ff=860, stopped by the "
                       r"largest size \(d_model <= 256 and d_ff within 0.75-1.25 x its preset ratio\)"):
        match_budget(config, flops_per_token=1e30, length=16, max_width=256)
