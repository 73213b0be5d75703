"""``seqarch compare --launcher``: one job per (architecture, learning rate, seed) through submitit
(the ``cluster`` extra), run here by submitit's local executor as real subprocesses, one of them
interrupted (a preemption) and requeued; ``--collect`` gathers the report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from submitit.local.local import LocalJobEnvironment

from seqarch.training.cli import main
from seqarch.training.config import validate
from seqarch.training.launch import SlurmOptions, collect, job_specs, launch, slurm_parameters, wait_for


def tiny(tmp_path, **train):
    return validate({
        "name": "launched", "output": str(tmp_path),
        "data": {"task": "mqar", "num_train": 128, "num_test": 32, "seq_len": 32},
        "model": {"d_model": 16}, "architectures": ["s4d"],
        "train": {"steps": 24, "batch_size": 8, "eval_every": 12, "checkpoint_every": 2, "log_every": 1,
                  "warmup_steps": 2, "lr": [1e-3, 3e-3], **train},
        "trainer": {"enable_progress_bar": False, "accelerator": "cpu"},
    }, command="compare")


def test_one_job_per_architecture_lr_and_seed(tmp_path):
    from seqarch.data import build_data
    from seqarch.training.compare import plan_comparison

    config = tiny(tmp_path, seeds=[0, 1])
    specs = job_specs(config, plan_comparison(config, build_data(config.data.spec(), seed=0)))
    assert [(s.name, s.lr, s.seed) for s in specs] == [("s4d", 1e-3, 0), ("s4d", 1e-3, 1), ("s4d", 3e-3, 0),
                                                       ("s4d", 3e-3, 1)]
    assert specs[1].folder.endswith("launched/s4d/lr-0.001/seed-1")


def test_local_jobs_run_as_subprocesses_and_a_preempted_job_resumes(tmp_path):
    config = tiny(tmp_path, lr=1e-3)  # one job: the requeue is what this test proves, not the sweep
    executor = submitit.LocalExecutor(folder=tmp_path / "logs")
    executor.update_parameters(timeout_min=10)
    [job] = launch(config, "local", executor=executor)
    run = config.folder / "s4d" / "run"
    deadline = time.time() + 240
    while not list((run / "checkpoints").glob("step-*.ckpt")) and time.time() < deadline and not job.done():
        time.sleep(0.2)
    assert not job.done(), "the job finished before it could be interrupted"
    # The preemption / time-out signal, to the training process itself (submitit's local controller
    # does not forward it): submitit checkpoints the submission, the process exits, the controller requeues.
    controller = job._process.pid
    [task] = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    os.kill(int(task), LocalJobEnvironment._usr_sig())
    wait_for([job])
    log = job.paths.stderr.read_text() + job.paths.stdout.read_text()
    assert "Requeued" in log
    assert job.result()["steps"] == 24
    # The requeued job continued from its checkpoint (a restart from scratch writes no resumed log):
    # its CSV log starts at the checkpoint's step, which is past 0 and short of the end.
    [resumed] = run.glob("logs-resumed-*")
    assert 0 < int(resumed.name.rsplit("-", 1)[1]) < 24
    # The same command line again (build_executor's local executor, wait, collect): refused without --resume;
    # with it nothing is left to submit, and the report is written.
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config.to_dict()))
    assert main(["compare", str(path), "--launcher", "local"]) == 2
    assert main(["compare", str(path), "--launcher", "local", "--resume"]) == 0
    assert not list((config.folder / "submitit").glob("*_submission.pkl"))
    results = json.loads((config.folder / "results.json").read_text())
    [best] = results["results"]
    assert best["name"] == "s4d" and best["steps"] == 24
    assert (config.folder / "report.md").is_file()
    assert main(["compare", "--collect", str(config.folder)]) == 0
    # A slurm re-run that finds every job finished collects (it needs no sbatch: nothing is submitted).
    (config.folder / "report.md").unlink()
    assert main(["compare", str(path), "--launcher", "slurm", "--resume"]) == 0
    assert (config.folder / "report.md").is_file()


class Never:
    """An executor that accepts jobs and never runs them; its job ids are ``ids`` in turn."""

    def __init__(self, *ids):
        self.ids, self.submitted = list(ids), []

    def submit(self, fn, spec):
        self.submitted.append(spec.folder)
        return type("Job", (), {"job_id": self.ids.pop(0) if self.ids else "0"})()


def test_collect_lists_unfinished_jobs(tmp_path):
    config = tiny(tmp_path)
    launch(config, "local", executor=Never())
    results, missing = collect(config.folder)
    assert results == [] and len(missing) == 2


def test_bad_launcher_and_rejected_slurm_options_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tiny(tmp_path).to_dict()))
    assert main(["compare", str(path), "--launcher", "pbs"]) == 2
    with pytest.raises(ValueError, match="--launcher: expected one of local, slurm, got 'pbs'"):
        launch(tiny(tmp_path), "pbs")
    with pytest.raises(ValueError, match="SlurmOptions.extra.bogus: submitit's SLURM executor has no such option"):
        slurm_parameters(SlurmOptions(extra={"bogus": 1}), tiny(tmp_path), tmp_path)
    parameters = slurm_parameters(SlurmOptions(partition="gpu", gpus_per_node=4, time_min=30, account="lab"),
                                  tiny(tmp_path), tmp_path)
    assert parameters["slurm_partition"] == "gpu" and parameters["timeout_min"] == 30
    assert parameters["slurm_account"] == "lab" and parameters["slurm_gpus_per_node"] == 4
    with pytest.raises(ValueError, match="--collect: expected a run folder"):
        collect(tmp_path)
    assert not (tmp_path / "launched").exists()  # nothing was written by the refused launches


def test_slurm_options_come_from_the_config_unless_the_command_line_gives_them(tmp_path):
    import argparse

    from seqarch.training.cli import slurm_options

    config = validate({**tiny(tmp_path).to_dict(), "slurm": {"partition": "a100", "gpus": 8, "time": 90,
                                                              "account": "lab"}}, command="compare")
    given = argparse.Namespace(partition="h100", gpus=None, time=None, account=None)
    options = slurm_options(given, config)
    assert (options.partition, options.gpus_per_node, options.time_min, options.account) == ("h100", 8, 90, "lab")
    parameters = slurm_parameters(options, config, tmp_path)
    assert parameters["slurm_partition"] == "h100" and parameters["timeout_min"] == 90
    with pytest.raises(ValueError, match="slurm.gpus"):
        validate({**tiny(tmp_path).to_dict(), "slurm": {"gpus": 0}}, command="compare")


def test_bad_seeds_and_a_machine_without_slurm_are_named_on_the_command_line(tmp_path, caplog, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tiny(tmp_path).to_dict()))
    assert main(["compare", str(path), "--launcher", "local", "--seeds", "a,b"]) == 2
    assert "--seeds: expected a valid integer" in caplog.text and "'a'" in caplog.text
    assert main(["compare", str(path), "--launcher", "local", "--seeds", "1,1"]) == 2
    assert "--seeds: expected distinct seeds" in caplog.text
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # neither sbatch nor srun
    caplog.clear()
    assert main(["compare", str(path), "--launcher", "slurm"]) == 2
    assert "--launcher slurm: SLURM's sbatch and srun not found on PATH" in caplog.text
    assert not (tmp_path / "launched").exists()  # nothing written


@pytest.mark.parametrize("option, value, message", [("--gpus", "-1", "--gpus: expected a positive integer, got -1"),
                                                     ("--gpus", "0", "--gpus: expected a positive integer, got 0"),
                                                     ("--time", "0", "--time: expected a positive integer, got 0"),
                                                     ("--time", "-5", "--time: expected a positive integer, got -5")])
def test_command_line_slurm_values_follow_the_config_rules(tmp_path, caplog, option, value, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tiny(tmp_path).to_dict()))
    assert main(["compare", str(path), "--launcher", "slurm", option, value]) == 2
    assert message in caplog.text
    assert not (tmp_path / "launched").exists()


def test_a_job_writes_its_result_atomically_and_on_global_rank_zero_only(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    import seqarch.training.launch as launch_module
    import seqarch.training.run as run_module
    from seqarch.training.launch import JobSpec, run_job
    from seqarch.training.result import RunResult

    def train_run(config, bundle, model_config, *, lr, folder, resume, label):  # the training itself is not tested
        return RunResult(name=label, mixer=model_config.mixer, lr=lr, d_model=model_config.d_model,
                         n_layers=model_config.n_layers, params=1, flops_per_token=1.0, training_flops=1.0, steps=24,
                         metric="accuracy", higher_is_better=True, final=0.5, best=0.5, state_size=1,
                         tokens_per_s=1.0, wall_s=1.0, peak_memory_bytes=None, device="cpu", history=[],
                         model_config=model_config, folder=str(folder))

    monkeypatch.setattr(run_module, "train_run", train_run)
    written = []
    write_atomic = launch_module.write_atomic
    monkeypatch.setattr(launch_module, "write_atomic",
                        lambda path, text: (written.append(path), write_atomic(path, text)))
    spec = JobSpec(tiny(tmp_path, lr=1e-3).to_dict(), 0, "s4d", 1e-3, 0, str(tmp_path / "launched" / "s4d" / "run"))
    Path(spec.folder).mkdir(parents=True)
    result = Path(spec.folder) / "result.json"
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert run_job(spec)["steps"] == 24 and not result.exists() and written == []
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    values = run_job(spec)
    assert written == [result] and json.loads(result.read_text()) == values


def test_a_second_launch_follows_the_run_folder_rule_and_skips_jobs_still_running(tmp_path, monkeypatch):
    import subprocess
    import sys

    import seqarch.training.launch as launch_module
    from seqarch.training.run_folder import RunFolderError

    config = tiny(tmp_path)
    # A live stand-in for submitit's local controller (its command line names submitit), and a finished one.
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit.local._local"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        first = Never(str(alive.pid), str(gone.pid))
        launch(config, "local", executor=first)
        saved = {name: (config.folder / name).read_text() for name in ("config.yaml", "jobs.json")}
        assert [e["job_id"] for e in json.loads(saved["jobs.json"])] == [str(alive.pid), str(gone.pid)]
        with pytest.raises(RunFolderError, match="already holds a run; pass --resume"):
            launch(config, "local", executor=Never())
        other = tiny(tmp_path, batch_size=4)
        with pytest.raises(RunFolderError, match="train.batch_size was 8, now 4"):
            launch(other, "local", executor=Never(), resume=True)
        assert {name: (config.folder / name).read_text() for name in saved} == saved  # nothing written over
        # --resume: the job whose controller still runs is not submitted again, the other one is.
        again = Never("7")
        launch(config, "local", executor=again, resume=True)
        assert again.submitted == [first.submitted[1]]
        assert [e["job_id"] for e in json.loads((config.folder / "jobs.json").read_text())] == [str(alive.pid), "7"]
    finally:
        alive.kill()
        alive.wait()
    # SLURM jobs: submitit's state (sacct) says which are still pending or running.
    slurm = tiny(tmp_path, lr=1e-3, seeds=[0, 1, 2])
    launch(slurm.model_copy(update={"name": "on-slurm"}), "local", executor=Never())  # a folder to resume
    folder = tmp_path / "on-slurm"
    entries = json.loads((folder / "jobs.json").read_text())
    for entry, job_id in zip(entries, ("11", "12", "13")):
        entry.update(launcher="slurm", job_id=job_id)
    (folder / "jobs.json").write_text(json.dumps(entries))
    states = {"11": "PENDING", "12": "COMPLETED", "13": "CANCELLED by 1000"}
    monkeypatch.setattr(launch_module, "slurm_job_state", lambda job_id, logs: states[job_id])
    resumed = Never("21", "22")
    launch(slurm.model_copy(update={"name": "on-slurm"}), "slurm", executor=resumed, resume=True)
    assert resumed.submitted == [entries[1]["folder"], entries[2]["folder"]]


def test_a_job_is_finished_when_its_result_reached_the_steps(tmp_path):
    from seqarch.training.launch import JobSpec, finished

    spec = JobSpec(tiny(tmp_path).to_dict(), 0, "s4d", 1e-3, 0, str(tmp_path / "run"))
    result = tmp_path / "run" / "result.json"
    assert not finished(spec)
    result.parent.mkdir()
    for values, done in (({"steps": 24}, True), ({"steps": 12}, False), ({"steps": 12, "stopped_early": True}, True)):
        result.write_text(json.dumps(values))
        assert finished(spec) == done, values
    result.write_text("{not json")
    assert not finished(spec)
    # A resume that raises train.steps submits the finished jobs again (they continue from their checkpoints).
    config = tiny(tmp_path)
    launch(config, "local", executor=Never())
    for entry in json.loads((config.folder / "jobs.json").read_text()):
        Path(entry["folder"]).mkdir(parents=True)
        (Path(entry["folder"]) / "result.json").write_text(json.dumps({"steps": 24}))
    assert launch(config, "local", executor=Never(), resume=True) == []
    longer = Never()
    assert len(launch(tiny(tmp_path, steps=30), "local", executor=longer, resume=True)) == 2


def test_extra_slurm_options_from_the_config_and_the_command_line(tmp_path, caplog):
    import argparse

    from seqarch.training.cli import slurm_options

    config = validate({**tiny(tmp_path).to_dict(), "slurm": {"extra": {"constraint": "a100", "qos": "low"}}},
                      command="compare")
    given = argparse.Namespace(partition=None, gpus=None, time=None, account=None, launcher="slurm",
                               slurm_options=["qos=high", "cpus_per_task=8", "setup=[module load cuda]"])
    parameters = slurm_parameters(slurm_options(given, config), config, tmp_path)
    assert parameters["slurm_constraint"] == "a100" and parameters["slurm_qos"] == "high"
    assert parameters["slurm_cpus_per_task"] == 8 and parameters["slurm_setup"] == ["module load cuda"]
    # A parameter submitit rejects, named where it was given; nothing written.
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tiny(tmp_path).to_dict()))
    for option, message in (("bogus=1", "--slurm-option bogus: submitit's SLURM executor has no such option"),
                            ("partition=gpu", "--slurm-option partition: set by --partition or slurm.partition"),
                            ("nodes=2", "--slurm-option nodes: set by trainer.num_nodes"),
                            ("qos", "--slurm-option: expected KEY=VALUE")):
        caplog.clear()
        assert main(["compare", str(path), "--launcher", "slurm", "--slurm-option", option]) == 2
        assert message in caplog.text, option
    path.write_text(json.dumps({**tiny(tmp_path).to_dict(), "slurm": {"extra": {"mem_gigs": 64}}}))
    caplog.clear()
    assert main(["compare", str(path), "--launcher", "slurm"]) == 2
    assert "slurm.extra.mem_gigs: submitit's SLURM executor has no such option; expected one of" in caplog.text
    assert not (tmp_path / "launched").exists()
