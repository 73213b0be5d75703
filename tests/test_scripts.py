"""The benchmark scripts run end to end at tiny sizes and write their reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_bench_s4d_compares_both_formulations(tmp_path):
    run("bench_s4d.py", "--lengths", "64", "--width", "8", "--state", "8", "--repeats", "1", out=tmp_path)
    results = json.loads((tmp_path / "bench_s4d.json").read_text())["results"]
    assert {r["variant"] for r in results} == {"minimal", "seqarch"}
    assert all(r["seconds"] > 0 for r in results)


def test_bench_step_times_every_mixer(tmp_path):
    run("bench_step.py", "--positions", "0", "16", "--width", "16", "--steps", "2", out=tmp_path)
    payload = json.loads((tmp_path / "bench_step.json").read_text())
    import seqarch

    assert set(payload["seconds_per_step"]) == set(seqarch.MIXERS)


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
