"""The benchmark scripts run end to end at tiny sizes and write their reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run(script: str, *args: str, out: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


def test_bench_layers_writes_json_and_markdown(tmp_path):
    run("bench_layers.py", "--mixers", "attention", "s4d", "--lengths", "32", "64", "--width", "16",
        "--repeats", "1", out=tmp_path)
    payload = json.loads((tmp_path / "bench_layers.json").read_text())
    rows = payload["results"]
    assert {(r["mixer"], r["length"]) for r in rows} == {("attention", 32), ("attention", 64), ("s4d", 32), ("s4d", 64)}
    assert all(r["seconds"] > 0 and r["peak_bytes"] >= 0 and r["train_flops"] > 0 for r in rows)
    assert "s4d" in payload["crossover_length"]
    assert "| length |" in (tmp_path / "bench_layers.md").read_text()


def test_bench_layers_rejects_unknown_mixers(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_layers.py"), "--mixers", "lstm", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "--mixers: unknown mixer 'lstm'" in done.stderr



@pytest.mark.parametrize("script", ["bench_step.py", "bench_generate.py"])
def test_a_count_of_rounds_below_one_is_refused_naming_the_argument(tmp_path, script):
    done = subprocess.run([sys.executable, str(SCRIPTS / script), "--rounds", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "--rounds: expected an integer >= 1, got '0'" in done.stderr
    assert not list(tmp_path.iterdir())  # no report written


def test_bench_generate_refuses_cuda_graphs_off_a_gpu_naming_the_argument(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_generate.py"), "--cuda-graph", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "--cuda-graph: expected --device cuda" in done.stderr
    assert not list(tmp_path.iterdir())


def test_bench_s4d_compares_both_formulations(tmp_path):
    run("bench_s4d.py", "--lengths", "64", "--width", "8", "--state", "8", "--repeats", "1", out=tmp_path)
    results = json.loads((tmp_path / "bench_s4d.json").read_text())["results"]
    assert {r["variant"] for r in results} == {"minimal", "seqarch"}
    assert all(r["seconds"] > 0 for r in results)


def test_bench_step_times_every_mixer(tmp_path):
    run("bench_step.py", "--positions", "0", "16", "--width", "16", "--steps", "2", "--rounds", "2", out=tmp_path)
    payload = json.loads((tmp_path / "bench_step.json").read_text())
    import seqarch

    assert set(payload["seconds_per_step"]) == set(seqarch.MIXERS)


def test_bench_generate_pairs_every_model_with_attention(tmp_path):
    run("bench_generate.py", "--mixers", "s4d", "mamba2", "--batches", "1", "2", "--width", "16", "--layers", "1",
        "--prompt", "4", "--new-tokens", "4", "--rounds", "2", out=tmp_path)
    payload = json.loads((tmp_path / "bench_generate.json").read_text())
    for batch in ("1", "2"):
        row = payload["results"][batch]
        assert set(row) == {"plain_kv_loop", "attention", "s4d", "mamba2"} and row["plain_kv_loop"]["same_tokens"]
        for name in ("plain_kv_loop", "s4d", "mamba2"):
            low, high = row[name]["paired_range"]
            assert 0 < low <= row[name]["paired_over_attention"] <= high
    assert "paired" in (tmp_path / "bench_generate.md").read_text()


def test_count_step_ops_counts_every_dispatched_operator_by_line(tmp_path):
    run("count_step_ops.py", "--mixers", "s4d", "--width", "16", "--layers", "1", "--prompt", "4", "--steps", "2",
        "--by-line", out=tmp_path)
    results = json.loads((tmp_path / "count_step_ops.json").read_text())["results"]
    assert set(results) == {"attention", "s4d"}
    for row in results.values():
        assert row["ops_per_step"] > 0
        assert sum(row["by_line"].values()) == pytest.approx(row["ops_per_step"])  # every operator has a line
        assert any(line.startswith("seqarch/") for line in row["by_line"])
    assert any("attention.py" in line for line in results["attention"]["by_line"])


def test_count_step_ops_refuses_unknown_mixers(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "count_step_ops.py"), "--mixers", "nope", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0 and "--mixers" in done.stderr and "nope" in done.stderr


def test_bench_generate_pairs_compiled_steps_with_compiled_attention(tmp_path):
    """--compile: each named model's compiled generate between two of attention's (Dynamo's eager
    backend here: the pairing, not inductor, is under test)."""
    run("bench_generate.py", "--mixers", "s4d", "mamba2", "--compile", "s4d", "--compile-backend", "eager",
        "--batches", "1", "--width", "16", "--layers", "1", "--prompt", "4", "--new-tokens", "4", "--rounds", "2",
        out=tmp_path)
    row = json.loads((tmp_path / "bench_generate.json").read_text())["results"]["1"]
    low, high = row["s4d"]["compiled_paired_range"]
    assert 0 < low <= row["s4d"]["compiled_paired_over_attention"] <= high
    assert row["attention"]["compiled_tokens_per_s"] > 0 and "compiled_tokens_per_s" not in row["mamba2"]
    assert "compile_step='eager'" in (tmp_path / "bench_generate.md").read_text()


def test_minimal_s4d_baseline_computes_the_same_kernel():
    """The benchmark's baseline is the same layer with the materialising kernel: same numbers."""
    import torch

    sys.path.insert(0, str(SCRIPTS))
    try:
        from bench_s4d import minimal_kernel
    finally:
        sys.path.remove(str(SCRIPTS))
    from seqarch.mixers.s4d import S4D

    layer = S4D(6, d_state=8, causal=False, dtype=torch.float64)
    assert torch.allclose(minimal_kernel(layer, 50, torch.float64), layer.kernel(50, torch.float64), atol=1e-12)


def _compare_results(folder: Path, name: str, seeds: dict[str, dict[int, float]], lr: float = 3e-3) -> Path:
    """A minimal ``results.json`` of a compare run: per architecture, its seeds' test accuracies."""
    rows = [{"name": arch, "seed_runs": [{"seed": s, "test": value, "failure": None} for s, value in runs.items()]}
            for arch, runs in seeds.items()]
    config = {"name": name, "output": str(folder), "architectures": list(seeds), "train": {"lr": lr, "seeds": [0]}}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"config": config, "results": rows}))
    return folder


def pool_seeds(*runs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "pool_seeds.py"), *map(str, runs)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_pool_seeds_merges_parts_and_gives_the_t_interval(tmp_path):
    first = _compare_results(tmp_path / "a", "a", {"x": {0: 0.5}, "y": {0: 0.2}})
    more = _compare_results(tmp_path / "b", "b", {"x": {1: 0.7, 2: 0.6}})
    done = pool_seeds(first, more)
    assert done.returncode == 0, done.stderr
    # mean 0.6, sample sd 0.1, t(0.975, 2) = 4.303: half-width 4.303 * 0.1 / sqrt(3) = 0.248
    assert "| x | 0.500 | 0.700 | 0.600 | 0.600 ± 0.248 (n=3) |" in done.stdout
    assert "| y | 0.200 | - | - | 0.200 (n=1) |" in done.stdout


def test_pool_seeds_refuses_other_recipes_and_a_seed_twice(tmp_path):
    first = _compare_results(tmp_path / "a", "a", {"x": {0: 0.5}})
    other_lr = _compare_results(tmp_path / "b", "b", {"x": {1: 0.7}}, lr=1e-3)
    again = _compare_results(tmp_path / "c", "c", {"x": {0: 0.4}})
    assert "expected one recipe" in pool_seeds(first, other_lr).stderr
    assert "x seed 0 appears in two runs" in pool_seeds(first, again).stderr
