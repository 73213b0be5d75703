"""``seqarch mad`` and ``seqarch scale`` end to end at the smallest size, and ``scale --resume``."""

import importlib
import json
import logging

import pytest
import yaml

from seqarch.training import run as run_module
from seqarch.training.cli import main
from seqarch.training.config import validate
from seqarch.training.errors import ConfigError
from seqarch.training.mad import mad_points
from seqarch.training.scale import crossing_text, scale_points

compare_module = importlib.import_module("seqarch.training.compare")  # the package exports a function of that name
TINY_TRAIN = {"steps": 2, "batch_size": 8, "eval_every": 2, "eval_batches": 2, "checkpoint_every": 2,
              "warmup_steps": 1, "log_every": 1}


def write(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_mad_suite_end_to_end(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = {"name": "mad", "model": {"d_model": 16, "n_layers": 1}, "architectures": ["attention"],
              "mad": {"tasks": ["mad_compression", "mad_memorization"], "variants": "baseline", "num_test": 16},
              "train": TINY_TRAIN}
    assert main(["mad", write(tmp_path, config), "--output", str(tmp_path), "--quiet"]) == 0
    folder = tmp_path / "mad"
    payload = json.loads((folder / "mad.json").read_text())
    scores = payload["scores"]["attention"]
    assert set(scores) == {"mad_compression", "mad_memorization", "mad"}
    assert scores["mad"] == pytest.approx((scores["mad_compression"] + scores["mad_memorization"]) / 2)
    assert all(0 <= value <= 1 for value in scores.values())
    assert [p["label"] for p in payload["points"]] == ["mad_compression/baseline", "mad_memorization/baseline"]
    report = (folder / "report.md").read_text()
    assert "| attention |" in report and "mad_memorization/baseline" in report
    assert (folder / "mad_compression" / "baseline" / "attention" / "run" / "result.json").is_file()
    assert "point 2 of 2" in caplog.text and "training 2 steps" not in caplog.text  # --quiet: no progress lines


def test_mad_points_follow_the_section():
    config = validate({"architectures": ["attention"], "mad": {"tasks": ["mad_in_context_recall"],
                                                              "max_seq_len": 256, "num_test": 8}})
    points, left_out = mad_points(config)
    assert [p.label for p in points][:2] == ["mad_in_context_recall/baseline", "mad_in_context_recall/vocab_size=32"]
    assert left_out == ["mad_in_context_recall/seq_len=512", "mad_in_context_recall/seq_len=1024"]
    assert all(p.config.data.spec()["num_test"] == 8 for p in points)


SCALE = {"name": "scale", "data": {"task": "mqar", "vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2,
                                   "num_train": 64, "num_test": 16},
         "model": {"d_model": 16, "n_layers": 1}, "architectures": ["transformer"],
         "scale": {"flops_min": 3e7, "flops_max": 1.2e8, "points": 3}, "train": TINY_TRAIN}


class CountingModule(run_module.SeqarchModule):
    built = 0

    def __init__(self, *args, **kwargs):
        type(self).built += 1
        super().__init__(*args, **kwargs)


def test_scale_end_to_end_and_resume_trains_only_the_missing_points(tmp_path, monkeypatch, caplog):
    path = write(tmp_path, SCALE)
    real_train_run = run_module.train_run
    calls = []

    def interrupted(*args, **kwargs):  # the third run never starts: the process is killed before it
        calls.append(kwargs["folder"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train_run(*args, **kwargs)

    monkeypatch.setattr(compare_module, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["scale", path, "--output", str(tmp_path), "--quiet"])
    monkeypatch.setattr(compare_module, "train_run", real_train_run)
    monkeypatch.setattr(run_module, "SeqarchModule", CountingModule)
    caplog.set_level(logging.INFO)
    assert main(["scale", path, "--output", str(tmp_path), "--resume"]) == 0
    assert CountingModule.built == 1  # the two finished points kept their results
    # The progress line counts the whole command's runs, not the point's: the missing one is the third.
    assert "[3/3] transformer  training 2 steps" in caplog.text and "[1/1]" not in caplog.text
    folder = tmp_path / "scale"
    payload = json.loads((folder / "scale.json").read_text())
    flops = [c for c, _ in payload["curves"]["transformer"]]
    assert len(flops) == 3 and flops == sorted(flops)
    for achieved, target in zip(flops, [3e7, 6e7, 1.2e8]):
        assert achieved == pytest.approx(target, rel=0.02)  # each model matched to its budget
    fit = payload["fits"]["transformer"]
    assert fit["points"] == 3 and fit["b"] >= 0
    report = (folder / "scale.md").read_text()
    assert "(reference)" in report and "b, 95% interval" in report
    assert "s in this process, since the last resume" in report
    assert (folder / "loss_vs_flops.png").is_file()


def test_scale_config_errors():
    with pytest.raises(ConfigError, match="scale: expected a grid"):
        scale_points(validate({"architectures": ["transformer"]}))
    with pytest.raises(ConfigError, match="budget.params"):
        scale_points(validate({"architectures": ["transformer"], "budget": {"params": 1e5},
                               "scale": {"flops": [1e9, 2e9]}}))
    with pytest.raises(ConfigError, match="scale.flops_max: expected more than flops_min"):
        validate({"scale": {"flops_min": 1e9, "flops_max": 1e8}})


def test_scale_points_keep_the_config_budget_options_and_set_only_the_flops():
    config = validate({"architectures": ["transformer"], "scale": {"flops": [1e9, 4e9]},
                       "budget": {"width_multiple": 4, "attention_flops": "dense", "params_count": "non_embedding"}})
    budgets = [point.config.budget for point in scale_points(config)]
    assert [b.flops for b in budgets] == [1e9, 4e9]
    assert {(b.width_multiple, b.attention_flops, b.params_count) for b in budgets} == {(4, "dense", "non_embedding")}


def test_crossing_text_within_the_measured_range():
    from seqarch.scaling import PowerLawFit

    def law(a, b):
        return PowerLawFit(scale=a, b=b, e=1.0, c_ref=1.0, b_interval=None, rms_residual=0.0, points=3)

    curves = {"transformer": [(1e2, 0.0), (1e6, 0.0)], "ssm": [(1e3, 0.0), (1e8, 0.0)]}
    fits = {"transformer": law(1.0, 0.25), "ssm": law(10.0, 0.5)}  # equal at C = 1e4
    assert crossing_text("ssm", "transformer", curves, fits) == "10k FLOPs"
    curves["ssm"] = [(1e5, 0.0), (1e8, 0.0)]
    assert crossing_text("ssm", "transformer", curves, fits).startswith("no crossing in the measured range")


def test_a_resume_by_another_command_than_the_one_that_made_the_folder_is_refused(tmp_path, caplog):
    from seqarch.training.run_folder import folder_command

    config = {**SCALE, "scale": {"flops": [3e7, 6e7]}}
    path = write(tmp_path, config)
    assert main(["compare", path, "--output", str(tmp_path), "--quiet"]) == 0
    folder = tmp_path / "scale"
    report = (folder / "report.md").read_text()
    assert main(["scale", path, "--output", str(tmp_path), "--quiet", "--resume"]) == 2
    assert (f"--resume: the run in '{folder}' was made by seqarch compare, not seqarch scale; resume it with "
            "seqarch compare" in caplog.text)
    assert (folder / "report.md").read_text() == report and not (folder / "scale.json").exists()
    (folder / "made_by.json").unlink()  # a folder written before the command was recorded: its files say
    assert folder_command(folder) == "compare"
    (folder / "scale.json").write_text("{}")
    assert folder_command(folder) == "scale"
