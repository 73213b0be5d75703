"""Run folders that two jobs never share, resumes that never mix two configs, and comparisons
that record a failed architecture and go on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from test_training_run import fit, tiny_config

from seqarch.training.checkpoints import CheckpointError
from seqarch.training.cli import main
from seqarch.training.module import SeqarchModule
from seqarch.training.progress import ProgressLine
from seqarch.training.run_folder import config_differences

TINY = {"name": "tiny", "data": {"task": "mqar", "num_train": 64, "num_test": 32, "seq_len": 16},
        "model": {"d_model": 16, "mixer": "s4d"}, "architectures": ["s4d", "attention"],
        "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "warmup_steps": 1},
        "trainer": {"accelerator": "cpu"}}


def _cli(tmp_path: Path, *args: str, config: dict = TINY) -> int:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return main([args[0], str(path), *args[1:], "--output", str(tmp_path / "runs"), "--quiet"])


def test_train_and_compare_of_one_config_write_different_folders_and_never_over_a_run(tmp_path, caplog):
    assert _cli(tmp_path, "train") == 0
    assert _cli(tmp_path, "compare") == 0
    train, compare = tmp_path / "runs" / "tiny-train", tmp_path / "runs" / "tiny"
    assert json.loads((train / "results.json").read_text())["results"][0]["name"] == "s4d"
    assert [r["name"] for r in json.loads((compare / "results.json").read_text())["results"]] == ["s4d", "attention"]
    report = (compare / "report.md").read_text()
    for plot in ("metric_vs_flops", "accuracy_vs_state"):
        assert (compare / f"{plot}.pdf").read_bytes()[:4] == b"%PDF"
        assert b"<svg" in (compare / f"{plot}.svg").read_bytes()[:1000]
    assert "| steps |" in report and "| budget error |" in report
    assert _cli(tmp_path, "compare", "train.lr=0.01") == 2
    assert "already holds a run; pass --resume" in caplog.text
    assert (compare / "report.md").read_text() == report
    assert "matched budget" not in (train / "report.md").read_text().splitlines()[0]


def test_resume_refuses_another_recipe_or_model_and_applies_the_resumable_keys(tmp_path, caplog):
    assert _cli(tmp_path, "train", "model.mixer=attention") == 0
    # The README's pair: trained with model.mixer=attention, resumed without it.
    assert _cli(tmp_path, "train", "--resume") == 2
    assert "model.mixer was 'attention', now 's4d'" in caplog.text
    assert _cli(tmp_path, "train", "model.mixer=attention", "train.lr=0.01", "--resume") == 2
    assert "train.lr was 0.001, now 0.01" in caplog.text
    assert _cli(tmp_path, "train", "model.mixer=attention", "train.steps=4", "--resume") == 0
    folder = tmp_path / "runs" / "tiny-train"
    assert json.loads((folder / "result.json").read_text())["steps"] == 4
    resumes = [json.loads(line) for line in (folder / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["changed"] == {"train.steps": {"was": 2, "now": 4}}
    report = (folder / "report.md").read_text()
    assert "changed train.steps 2 -> 4" in report
    whole = json.loads((folder / "result.json").read_text())["wall_s"]
    assert f"in this process, since the last resume (the run's own, across its processes: {whole:.0f} s)" in report


def test_resume_where_no_run_was_started_is_an_error(tmp_path, caplog):
    assert _cli(tmp_path, "train", "--resume") == 2
    assert "--resume: no run to resume in" in caplog.text and "tiny-train" in caplog.text
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_of_another_model_is_refused_naming_the_keys(tmp_path):
    fit(tiny_config(steps=4), tmp_path / "run")
    wider = tiny_config(steps=8)
    wider.model.d_model = 32
    with pytest.raises(CheckpointError, match="model.d_model was 16, now 32"):
        fit(wider, tmp_path / "run", resume=True)


def test_resume_of_a_finished_comparison_keeps_its_measurements(tmp_path):
    assert _cli(tmp_path, "compare") == 0
    folder = tmp_path / "runs" / "tiny"
    before = json.loads((folder / "results.json").read_text())["results"]
    assert _cli(tmp_path, "compare", "--resume") == 0
    after = json.loads((folder / "results.json").read_text())["results"]
    for old, new in zip(before, after):
        assert new["tokens_per_s"] == old["tokens_per_s"] > 0 and new["wall_s"] == old["wall_s"]
        assert new["history"] == old["history"]


def test_a_nan_in_one_architecture_is_reported_and_the_others_still_train(tmp_path, monkeypatch, caplog):
    original = SeqarchModule._loss_and_counts

    def poisoned(self, batch):
        loss, scored, correct = original(self, batch)
        nan = self.config.mixer == "s4d" and self.training and self.global_step >= 1
        return (loss * float("nan") if nan else loss), scored, correct

    monkeypatch.setattr(SeqarchModule, "_loss_and_counts", poisoned)
    assert _cli(tmp_path, "compare") == 1
    results = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())["results"]
    assert [(r["name"], r["failure"] is not None) for r in results] == [("s4d", True), ("attention", False)]
    assert "at step 1" in results[0]["failure"] and results[1]["best"] is not None
    report = (tmp_path / "runs" / "tiny" / "report.md").read_text()
    assert "**s4d failed**" in report and "| s4d |" in report
    assert "s4d (lr 0.001) failed" in caplog.text


def test_compare_checks_every_run_folder_before_the_first_trains(tmp_path, caplog):
    assert _cli(tmp_path, "compare") == 0
    bad = tmp_path / "runs" / "tiny" / "attention" / "run" / "checkpoints" / "step-0000002.ckpt"
    bad.write_bytes(b"damaged")
    (tmp_path / "runs" / "tiny" / "s4d" / "run" / "result.json").unlink()  # s4d would train again first
    assert _cli(tmp_path, "compare", "--resume") == 2
    assert "step-0000002.ckpt" in caplog.text and "cannot be read" in caplog.text
    assert not (tmp_path / "runs" / "tiny" / "s4d" / "run" / "result.json").exists()


def test_config_differences_split_refused_from_resumable_keys():
    refused, allowed = config_differences({"train": {"lr": 1, "steps": 2}, "trainer": {"devices": 1}},
                                          {"train": {"lr": 2, "steps": 3}, "trainer": {"devices": 2}})
    assert refused == {"train.lr": (1, 2)}
    assert allowed == {"train.steps": (2, 3), "trainer.devices": (1, 2)}
    quiet = config_differences({"trainer": {"enable_progress_bar": True}}, {"trainer": {"enable_progress_bar": False}})
    assert quiet == ({}, {})  # --quiet on resume is not a change of the run


def test_the_progress_line_names_the_run_its_place_the_step_the_metric_and_the_eta(tmp_path):
    progress = ProgressLine("s4d", 2, 3, 12, "val/accuracy", every_s=0.0)
    fit(tiny_config(steps=12, stop_at=0.0), tmp_path / "run", callbacks=[progress])
    assert progress.lines[0] == "[2/3] s4d  training 12 steps"
    during = progress.lines[1]
    assert during.startswith("[2/3] s4d  step 1/12  loss ") and "ETA run " in during and ", all " in during
    assert any("val/accuracy" in line for line in progress.lines)
    assert "stopped early at step 6: val/accuracy reached train.stop_at" in progress.lines[-1]


def test_resume_without_a_checkpoint_says_it_starts_at_step_0_and_keeps_the_earlier_log(tmp_path, caplog, recwarn):
    caplog.set_level(logging.INFO)
    assert _cli(tmp_path, "train") == 0
    folder = tmp_path / "runs" / "tiny-train"
    for path in [*(folder / "checkpoints").iterdir(), folder / "result.json"]:  # killed before its first checkpoint
        path.unlink()
    earlier = (folder / "logs" / "metrics.csv").read_text()
    assert _cli(tmp_path, "train", "--resume") == 0
    assert f"no checkpoint in {folder}: starting at step 0" in caplog.text
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]
    assert (folder / "logs" / "metrics.csv").read_text() == earlier and (folder / "logs-2" / "metrics.csv").is_file()
    assert json.loads((folder / "result.json").read_text())["steps"] == 2


def test_a_report_written_between_runs_draws_png_only_and_leaves_no_stale_pdf_or_svg(tmp_path):
    """After each run the report's plots are redrawn as PNG alone; the PDF and SVG of an earlier final
    report are removed then (not left older than the PNG), and the final report writes all three."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqarch.training.plots import PLOT_FORMATS, _save

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = tmp_path / "metric_vs_flops.png"
    _save(fig, path)
    assert all(path.with_suffix(f".{suffix}").is_file() for suffix in PLOT_FORMATS)
    _save(fig, path, ("png",))
    plt.close(fig)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not path.with_suffix(".pdf").exists() and not path.with_suffix(".svg").exists()
