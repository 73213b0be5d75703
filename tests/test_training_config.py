"""Run configs, overrides, optimiser groups, the step-indexed batch order and CLI errors."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import seqarch
from seqarch.data import ACCURACY, LOSS
from seqarch.devices import peak_flops
from seqarch.losses import IGNORE_INDEX
from seqarch.models.presets import PRESETS
from seqarch.training.checkpoints import EvalHistory
from seqarch.training.cli import build_parser, main
from seqarch.training.config import (
    SECTIONS,
    ConfigError,
    apply_overrides,
    config_schema,
    experiments_folder,
    load_config,
    shipped_experiments,
    sweep_points,
    validate,
)
from seqarch.training.datamodule import StepBatchSampler
from seqarch.training.defaults import default_config
from seqarch.training.module import SeqarchModule, device_peak_flops
from seqarch.training.optim import describe_groups, parameter_groups, warmup_cosine
from seqarch.training.report import sweep_table
from seqarch.training.result import RunResult

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_embedded_default_is_the_shipped_experiments_mqar_yaml():
    assert default_config() == yaml.safe_load((EXPERIMENTS / "mqar.yaml").read_text())
    assert experiments_folder().resolve() == EXPERIMENTS.resolve()
    assert load_config(None, command="compare") == load_config(EXPERIMENTS / "mqar.yaml", command="compare")
    # The default compares attention, a gated convolution and an SSM on fresh data, in under 4 CPU minutes.
    default = load_config(None, command="compare")
    assert [a.name for a in default.architectures] == ["transformer", "m2", "s4d"]
    assert "num_train" not in default.data.spec() and default.train.eval_batches == 8


def test_a_shipped_experiment_is_named_without_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ folder here: the installed package data is read
    assert load_config("mqar_sweep", command="compare").name == "mqar_sweep"
    assert "lm_small" in shipped_experiments()
    with pytest.raises(ConfigError, match=r"config: no such file: 'mqar_swep'; expected a YAML file or a shipped"):
        load_config("mqar_swep")


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_config_is_valid_and_uses_presets(path):
    config = load_config(path, command="compare")
    assert config.architectures and all(a.preset is not None for a in config.architectures)


def test_overrides_are_parsed_as_yaml_and_nested():
    values = apply_overrides({"train": {"steps": 5}}, ["train.steps=100", "train.lr=[1e-3, 3e-3]", "model.mixer=s4d"])
    assert values == {"train": {"steps": 100, "lr": [1e-3, 3e-3]}, "model": {"mixer": "s4d"}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.steps"])


@pytest.mark.parametrize("config, message", [
    ({"trian": {}}, "config: unknown key 'trian'"),
    ({"train": {"stpes": 3}}, "train: unknown key 'stpes'"),
    ({"model": {"vocab_size": 3}}, "model: unknown key 'vocab_size'"),
    ({"train": {"steps": 0}}, r"train.steps: expected a positive integer, got 0"),
    ({"train": {"steps": True}}, r"train.steps: expected a positive integer, got True"),
    ({"train": {"lr": -1}}, r"train.lr: expected a positive number, got -1"),
    ({"train": {"lr": [1e-3, 0]}}, r"train.lr: expected a positive number, got 0"),
    ({"train": {"precision": "bf17"}}, r"train.precision: expected 'auto', '32', .* got 'bf17'"),
    ({"train": {"warmup_steps": -1}}, r"train.warmup_steps: expected a number >= 0, got -1"),
    ({"model": {"d_model": 0}}, r"model.d_model: expected a positive integer, got 0"),
    ({"model": {"mixer": 3}}, r"model.mixer: expected a valid string, got 3"),
    ({"data": {"seq_len": 64}}, r"data.task: expected a value, got none"),
    ({"sweep": {"d_model": []}}, r"sweep.d_model: expected a non-empty list, got \[\]"),
    ({"architectures": [{"name": "a", "preset": "nope"}]}, r"architectures\[0\].preset: unknown preset 'nope'"),
    ({"architectures": [{"preset": "m2", "d_model": 0}]}, r"architectures\[0\].d_model: expected a positive integer"),
    ({"budget": {"params": 1e5, "flops": 1e12}}, "budget: expected one of 'params' or 'flops', got both"),
    ({"logger": "tensorboard"}, "logger: expected one of csv, wandb, got 'tensorboard'"),
    ({"architectures": [3]},
     r"architectures\[0\]: expected an architecture name \(a preset or a mixer\) or a mapping, got 3"),
    ({"architectures": ["s4d", "s4d"]}, "architectures: expected distinct names"),
    ({"sweep": {"d_model": [64]}, "budget": {"params": 1e5}}, "sweep.d_model: a width sweep"),
])
def test_bad_configs_name_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_every_bad_key_is_named_at_once():
    with pytest.raises(ConfigError) as error:
        validate({"train": {"steps": 0, "batch_size": -2}, "budget": {"match_by": "height"}})
    assert str(error.value).splitlines() == [
        "budget.match_by: expected 'width' or 'depth', got 'height'",
        "train.steps: expected a positive integer, got 0", "train.batch_size: expected a positive integer, got -2"]


def test_config_values_are_typed_and_the_learning_rate_list_rule_lives_once():
    config = validate({"train": {"steps": 1e3, "lr": 3e-3, "precision": 32}})
    assert config.train.steps == 1000 and isinstance(config.train.steps, int)
    assert config.train.precision == "32" and config.train.learning_rates == [3e-3]
    assert validate({"train": {"lr": [1e-3, 3e-3]}}).train.learning_rates == [1e-3, 3e-3]


def test_architectures_name_presets_mixers_or_mappings_with_overrides():
    config = validate({"model": {"d_model": 32, "channel_mixer": "mlp"}, "architectures": [
        "m2", "attention", {"name": "m2-2b", "preset": "m2", "monarch_blocks": 2}, {"mixer": "s4d", "n_layers": 3}]})
    m2, attention, m2_2b, s4d = config.architectures
    # A preset wins over the mixer of the same name, and over the model section's channel mixer.
    assert (m2.preset, m2.model_fields_over(config.model.overrides())["channel_mixer"]) == ("m2", "monarch")
    assert attention.preset is None and attention.model_fields_over({"channel_mixer": "mlp"}) == {
        "channel_mixer": "mlp", "mixer": "attention"}
    assert m2_2b.model_fields_over({})["monarch_blocks"] == 2
    assert (s4d.name, s4d.preset, s4d.model_fields_over({})) == ("s4d", None, {"mixer": "s4d", "n_layers": 3})


def test_a_saved_config_validates_back_to_the_same_config():
    config = load_config(EXPERIMENTS / "lm_small.yaml", ["architectures=[transformer, attention, {mixer: s4d}]"])
    saved = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert saved["model"] == {"d_model": 128, "n_layers": 4}
    assert saved["architectures"] == [{"name": "transformer", "preset": "transformer"},
                                      {"name": "attention", "mixer": "attention"}, {"name": "s4d", "mixer": "s4d"}]
    assert saved["train"]["warmup_steps"] == 30 and saved["train"]["keep_checkpoints"] == 2  # defaults filled in
    assert validate(saved) == config and validate(config) == config


def test_schema_and_help_come_from_the_config_models():
    schema = config_schema()
    assert set(schema["properties"]) == set(SECTIONS)
    train = schema["$defs"]["TrainSection"]["properties"]
    assert train["steps"]["default"] == 500 and "optimiser steps" in train["steps"]["description"]
    assert "width" in schema["$defs"]["ModelSection"]["properties"]["d_model"]["description"]
    help_text = build_parser().format_help()
    for section in SECTIONS:
        assert f"  {section} " in help_text
    assert "modules to import first" in help_text and "mqar_sweep" in help_text


def test_compare_needs_architectures():
    with pytest.raises(ConfigError, match="architectures: expected at least one"):
        validate({}, command="compare")


def test_sweep_expands_data_points_and_widths():
    config = validate({"architectures": ["attention", "s4d"], "sweep": {
        "data": [{"seq_len": 64, "num_kv_pairs": 4}, {"seq_len": 128, "num_kv_pairs": 8}], "d_model": [64, 128]}})
    points = sweep_points(config)
    assert [label for label, _ in points] == ["seq_len64-num_kv_pairs4", "seq_len128-num_kv_pairs8"]
    second = points[1][1]
    assert second.data.spec()["seq_len"] == 128 and not second.sweep.is_set
    assert [(a.name, a.d_model, a.preset) for a in second.architectures] == [
        ("attention-d64", 64, None), ("attention-d128", 128, None), ("s4d-d64", 64, "s4d"), ("s4d-d128", 128, "s4d")]
    assert config.architectures[0].name == "attention"  # the sweep leaves the config alone


def test_parameter_groups_follow_optim_hints():
    model = seqarch.LanguageModel(seqarch.ModelConfig(mixer="s4d", d_model=32, mixer_options={"lr_scale": 0.25}))
    groups = parameter_groups(model, lr=3e-3, weight_decay=0.1)
    by_name = {name: g for g in groups for name in g["names"]}
    assert by_name["backbone.blocks.0.mixer.kernel.log_dt"]["lr"] == pytest.approx(0.25 * 3e-3)
    assert by_name["backbone.blocks.0.mixer.kernel.log_dt"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.channel.fc1.weight"]["lr"] == 3e-3
    assert by_name["backbone.blocks.0.channel.fc1.weight"]["weight_decay"] == 0.1
    assert by_name["backbone.embedding.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.norm.weight"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("mixer", ["s4d", "s4", "hyena", "m2", "h3"])
def test_a_learning_rate_sweep_moves_the_kernel_parameters_too(mixer):
    """Layer hints are multiples of the run's lr: doubling train.lr doubles every group's rate."""
    config = seqarch.ModelConfig(mixer=mixer, d_model=16, vocab_size=32, mixer_options={"max_length": 64}
                                 if mixer in ("s4", "hyena", "m2") else {})
    model = seqarch.LanguageModel(config)
    low, high = (parameter_groups(model, lr=lr, weight_decay=0.1) for lr in (1e-3, 2e-3))
    hinted = [g for g in low if g["lr_scale"] != 1.0]
    assert hinted and all(g["lr_scale"] == 0.5 and g["weight_decay"] == 0.0 for g in hinted)  # the default scale
    assert [g["lr"] for g in high] == pytest.approx([2 * g["lr"] for g in low])
    assert "lr 0.0005 (0.5 x lr), wd 0" in describe_groups(low)


def test_an_absolute_learning_rate_hint_is_refused():
    model = seqarch.LanguageModel(seqarch.ModelConfig(mixer="attention", d_model=16, vocab_size=32))
    model.head.weight._optim = {"lr": 1e-3}
    with pytest.raises(ValueError, match=r"_optim: expected keys among \['lr_scale', 'weight_decay'\].*got \['lr'\]"):
        parameter_groups(model, lr=3e-3, weight_decay=0.1)


def test_warmup_then_cosine():
    factors = [warmup_cosine(s, total_steps=110, warmup_steps=10, min_ratio=0.1) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[110] == pytest.approx(0.1)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def test_step_batches_are_fixed_by_seed_and_step_and_shard_over_ranks():
    full = list(StepBatchSampler(10, 4, 7, seed=3))
    assert len(full) == 7 and all(len(b) == 4 for b in full)
    # Epochs are permutations: the first 10 positions (2.5 batches) hold every index once.
    flat = [i for b in full for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]
    assert list(StepBatchSampler(10, 4, 7, seed=3, start=lambda: 5)) == full[5:]
    assert list(StepBatchSampler(10, 4, 7, seed=4)) != full
    ranks = [list(StepBatchSampler(10, 4, 7, seed=3, rank=r, world_size=2)) for r in range(2)]
    for step in range(7):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(full[step])
    with pytest.raises(ValueError, match="train.batch_size: expected a multiple of the 3 processes, got 4"):
        StepBatchSampler(10, 4, 7, seed=3, world_size=3)


def test_help_explains_every_option():
    parser = build_parser()
    for command in ("train", "compare"):
        text = parser._subparsers._group_actions[0].choices[command].format_help()
        for option in ("--resume", "--output", "--name", "--cache-dir", "--quiet", "--import", "KEY=VALUE", "config"):
            assert option in text


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


TINY = {"name": "tiny", "data": {"task": "mqar", "num_train": 64, "num_test": 32},
        "model": {"d_model": 16}, "train": {"steps": 2, "batch_size": 8, "eval_every": 1}}


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["attention", "nosuchmixer"]}, "unknown mixer 'nosuchmixer'"),
    ({"architectures": ["attention"], "budget": {"params": 10}}, "budget"),
    ({"architectures": ["attention"], "data": {"task": "text", "source": "/no/such/corpus"}}, "/no/such/corpus"),
    ({"architectures": ["attention"], "train": {"no_such_key": 1}}, "train: unknown key 'no_such_key'"),
])
def test_cli_bad_input_fails_before_training_and_writes_nothing(tmp_path, caplog, change, message):
    config = {**TINY, **change}
    path = _write(tmp_path / "config.yaml", config)
    out = tmp_path / "runs"
    assert main(["compare", str(path), "--output", str(out), "--quiet"]) == 2
    assert message in caplog.text
    assert not out.exists()


def test_cli_corrupt_checkpoint_is_a_clear_error_and_is_left_alone(tmp_path, caplog):
    path = _write(tmp_path / "config.yaml", {**TINY, "train": {**TINY["train"], "keep_checkpoints": 1}})
    assert main(["train", str(path), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    folder = tmp_path / "runs" / "tiny-train" / "checkpoints"
    corrupt = folder / "step-0000002.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["train", str(path), "--output", str(tmp_path / "runs"), "--resume", "--quiet"]) == 2
    assert "step-0000002.ckpt" in caplog.text and "cannot be read" in caplog.text
    assert corrupt.read_bytes() == b"not a checkpoint"
    # Without --resume the run refuses to write into the folder.
    assert main(["train", str(path), "--output", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "already holds a run" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000002.ckpt"]
    assert torch.__version__  # the process is intact after both errors


def test_mfu_reads_the_shared_device_peaks():
    assert peak_flops("NVIDIA H100 PCIe") == 756e12  # not the SXM card's 989e12: MFU read ~30% low before
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-40GB") == 312e12 and peak_flops("NVIDIA A100-SXM4-40GB", "fp32") == 19.5e12
    assert peak_flops("NVIDIA GeForce GTX 1080") is None
    assert device_peak_flops(torch.device("cpu")) is None


def test_the_lightning_module_scores_with_the_models_own_loss():
    config = validate({"model": {"d_model": 16, "mixer": "s4d"}})
    model_config = seqarch.ModelConfig(vocab_size=20, d_model=16, mixer="s4d")
    module = SeqarchModule(model_config, "lm", config.train, 1e-3, 8)
    assert module.hparams["model_config"] == model_config.to_dict() and module.hparams["train"]["steps"] == 500
    tokens = torch.randint(0, 20, (2, 8))
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, -3:] = tokens[:, -3:]
    loss, scored, correct = module._loss_and_counts((tokens, targets))
    torch.testing.assert_close(loss, module.model.loss(tokens, targets))
    assert int(scored) == 6 and 0 <= int(correct) <= 6


class _Validated:
    sanity_checking, global_step, should_stop = False, 5, False

    def __init__(self, **metrics):
        self.callback_metrics = {k.replace("_", "/"): torch.tensor(v) for k, v in metrics.items()}


def test_stop_at_follows_the_tasks_metric():
    for metric, stop_at, metrics, stops in [
        (ACCURACY, 0.99, {"val_accuracy": 0.99, "val_loss": 3.0}, True),
        (ACCURACY, 0.99, {"val_accuracy": 0.5, "val_loss": 0.1}, False),
        (LOSS, 1.5, {"val_accuracy": 0.1, "val_loss": 1.4}, True),  # a language model stops at a low loss
        (LOSS, 1.5, {"val_accuracy": 0.999, "val_loss": 1.6}, False),
    ]:
        trainer = _Validated(**metrics)
        EvalHistory(10, 2.0, metric, stop_at).on_validation_end(trainer, None)
        assert trainer.should_stop is stops, (metric, metrics)


def _result(name: str, mixer: str, d_model: int, point: str, best: float) -> RunResult:
    return RunResult(name=name, mixer=mixer, lr=1e-3, d_model=d_model, n_layers=2, params=1, flops_per_token=1.0,
                     training_flops=1.0, steps=1, metric="val/accuracy", higher_is_better=True, final=best, best=best,
                     state_size=0, tokens_per_s=1.0, wall_s=1.0, peak_memory_bytes=None, device="cpu", history=[],
                     model_config=seqarch.ModelConfig(mixer=mixer, d_model=d_model), folder="f", data_point=point,
                     seq_len=64)


def test_the_sweep_table_has_a_row_per_architecture_not_per_mixer():
    results = [_result(f"{name}-d{width}", "m2", width, "seq_len64", best)
               for name, best in (("m2", 0.5), ("hyena", 0.25)) for width in (64, 128)]
    table = sweep_table(results).splitlines()
    assert table[0] == "| architecture | seq_len64 d64 | seq_len64 d128 |"
    assert table[2:] == ["| m2 | 0.5000 | 0.5000 |", "| hyena | 0.2500 | 0.2500 |"]
    assert results[0].to_dict()["model_config"]["mixer"] == "m2"
    assert sweep_table([_result("m2", "m2", 64, "", 0.5)]) is None


def test_cli_lists_the_architectures_one_line_each_and_prints_the_schema(capsys):
    assert main(["architectures"]) == 0
    lines = capsys.readouterr().out.splitlines()
    presets = {line.split()[0]: line for line in lines[1:lines.index(next(x for x in lines if x.startswith("mixers")))]}
    assert set(presets) == set(PRESETS)
    assert "Monarch MLP" in presets["m2"] and "channel_mixer=monarch" in presets["m2"]
    assert "channel_mixer=glu" in presets["hyena"] and "mixer=hyena" in presets["hyena"]
    assert main(["schema"]) == 0
    assert set(json.loads(capsys.readouterr().out)["properties"]) == set(SECTIONS)
