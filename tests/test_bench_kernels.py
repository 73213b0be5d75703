"""The kernel microbenchmark runs end to end on the CPU, records failures per row, and checks targets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import seqarch.devices

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_kernels
    finally:
        sys.path.remove(str(SCRIPTS))
    return bench_kernels


def test_cpu_run_writes_a_row_per_op_and_mode(tmp_path, bench):
    # The benchmark times the twins on the CPU: no need for the Triton interpreter pytest's conftest turns on.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # One thread: on a shared 2-core machine, two spinning torch threads make the timings erratic.
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_kernels.py"), "--quick", "--device", "cpu",
                           "--threads", "1", "--repeats", "1", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    payload = json.loads((tmp_path / "bench_kernels.json").read_text())
    rows = payload["results"]
    assert {r["op"] for r in rows} == set(bench.OPS)
    assert {(r["op"], r["mode"]) for r in rows} == {(op, mode) for op in bench.OPS for mode in bench.MODES}
    for r in rows:
        assert not any("error" in key for key in r), r
        for key in ("ours_ms", "theirs_ms", "speedup", "ours_throughput", "theirs_throughput"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["backend"] == "torch" and r["target_met"] is None
    assert payload["triton_timed"] is False
    markdown = (tmp_path / "bench_kernels.md").read_text()
    assert "Triton numbers need a GPU" in markdown
    assert markdown.count("| n/a (CPU") == len(rows)
    assert all(f"`{op}`" in markdown for op in bench.OPS)


def test_unknown_op_is_rejected(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_kernels.py", "--ops", "lstm"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code != 0 and "--ops: unknown op 'lstm'" in capsys.readouterr().err


def test_a_failing_side_is_recorded_and_the_other_still_timed(bench):
    def broken(**inputs):
        raise RuntimeError("kernel exploded")

    op = bench.OPS["short_conv"]
    failing = bench.Op(**{**op.__dict__, "ours": broken})
    case = op.cases("tiny")[0]
    rows = bench.bench_case("short_conv", failing, case, torch.device("cpu"), torch.float32, repeats=1)
    assert [r["mode"] for r in rows] == list(bench.MODES)
    for r in rows:
        assert r["ours_error"] == "RuntimeError: kernel exploded"
        assert r["theirs_ms"] > 0 and "speedup" not in r
    markdown = bench.markdown(rows, ["short_conv"], torch.device("cpu"), "float32", "tiny", 1)
    assert "ours: RuntimeError: kernel exploded" in markdown


def test_a_failing_setup_is_recorded(bench):
    def bad_make(device, dtype):
        raise ValueError("x: expected rank 3")

    op = bench.OPS["short_conv"]
    rows = bench.bench_case("short_conv", op, bench.Case("bad", bad_make), torch.device("cpu"), torch.float32, 1)
    assert [r["error"] for r in rows] == ["setup: ValueError: x: expected rank 3"] * len(bench.MODES)


def test_targets_are_checked_per_mode(bench):
    attention = bench.OPS["attention"]
    fast = {"mode": "fwd", "speedup": 1.1, "throughput": 450.0}
    assert bench.check_targets(attention, fast, on_gpu=True) == (True, "met")
    met, text = bench.check_targets(attention, {**fast, "throughput": 300.0}, on_gpu=True)
    assert met is False and "TFLOP/s 300 < 400" in text
    assert bench.check_targets(attention, {"mode": "fwd+bwd", "speedup": 0.95}, on_gpu=True)[0] is True
    fft = bench.OPS["fft_conv"]
    met, text = bench.check_targets(fft, {"mode": "fwd", "speedup": 4.0, "memory_ratio": 0.7}, on_gpu=True)
    assert met is False and "memory ratio 0.7 > 0.5" in text
    assert bench.check_targets(fft, {"mode": "fwd", "speedup": 4.0}, on_gpu=True)[0] is None
    assert bench.check_targets(fft, fast, on_gpu=False) == (None, "n/a (CPU: twins, no Triton)")


def test_summarise_derives_rates_ratios_and_the_target_on_a_gpu(bench):
    ssm = bench.OPS["ssm_kernel"]
    peaks = bench.device_peaks("NVIDIA H100 80GB HBM3")
    row = {"op": "ssm_kernel", "case": "c", "mode": "fwd", "ours_ms": 2.0, "theirs_ms": 20.0, "ours_peak_bytes": 300,
           "theirs_peak_bytes": 3000}
    out = bench.summarise(row, ssm, work=67e9, io=100, peaks=peaks, dtype=torch.complex64, on_gpu=True)
    assert out["unit"] == "TFLOP/s" and out["ours_throughput"] == pytest.approx(33.5)
    assert out["theirs_throughput"] == pytest.approx(3.35) and out["speedup"] == pytest.approx(10.0)
    assert out["peak_share"] == pytest.approx(0.5)  # of the 67 TFLOP/s fp32 peak
    assert out["memory_ratio"] == pytest.approx(0.1) and out["memory_per_io"] == pytest.approx(3.0)
    assert out["target"] == "met" and out["target_met"] is True
    heavy = bench.summarise({**row, "ours_peak_bytes": 500}, ssm, 67e9, 100, peaks, torch.complex64, on_gpu=True)
    assert heavy["target_met"] is False and "peak memory / io bytes 5 > 4" in heavy["target"]
    unknown = bench.summarise(dict(row), ssm, 67e9, 100, None, torch.complex64, on_gpu=True)
    assert "peak_share" not in unknown
    assert "| - |" in bench.markdown([unknown], ["ssm_kernel"], torch.device("cpu"), "float32", "full", 1)
    short = bench.summarise({"mode": "fwd", "ours_ms": 1.0}, bench.OPS["short_conv"], 3.35e9, 3.35e9, peaks,
                            torch.bfloat16, on_gpu=True)
    assert short["unit"] == "GB/s" and short["peak_share"] == pytest.approx(1.0)  # 3.35 GB in 1 ms is HBM3 speed
    assert short["target_met"] is None and short["target"] == "not measured (speed-up)"


def test_device_peaks_match_by_name(bench):
    assert bench.device_peaks("NVIDIA H100 80GB HBM3")["bf16"] == 989e12
    assert bench.device_peaks("NVIDIA H100 80GB HBM3")["hbm"] == 3.35e12
    assert bench.device_peaks("NVIDIA GeForce GTX 1080") is None
    # One table with the training MFU; a PCIe H100 is not taken for the SXM card.
    assert bench.device_peaks is seqarch.devices.device_peaks
    assert bench.device_peaks("NVIDIA H100 PCIe")["bf16"] == 756e12
    assert bench.peak_key("flops", torch.bfloat16) == "bf16"
    assert bench.peak_key("flops", torch.complex64) == "fp32"
    assert bench.peak_key("bytes", torch.bfloat16) == "hbm"


def test_every_op_has_cases_at_every_size(bench):
    for name, op in bench.OPS.items():
        for size in bench.SIZES:
            cases = op.cases(size)
            assert cases and len({c.label for c in cases}) == len(cases), (name, size)
            assert set(op.targets) == set(bench.MODES)


def test_work_formulas(bench):
    q = torch.zeros(2, 3, 8, 4)
    inputs = {"q": q, "k": q, "v": q, "causal": False}
    assert bench.attention_flops(inputs, q, "fwd") == 4 * 2 * 3 * 8 * 8 * 4
    assert bench.attention_flops({**inputs, "causal": True}, q, "fwd+bwd") == 3.5 * 0.5 * 4 * 2 * 3 * 8 * 8 * 4
    x, y = torch.zeros(10, 4), torch.zeros(10, 4)
    assert bench.io_bytes({"x": x, "n": 3}, y, "fwd", ("x",)) == 160 + 160
    assert bench.io_bytes({"x": x}, y, "fwd+bwd", ("x",)) == 2 * 160 + 2 * 160 + 160


def test_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    text = (SCRIPTS / "gpu_check.sh").read_text()
    assert "set -u" in text and 'pytest -q tests -k "gpu or kernel"' in text and "bench_kernels.py" in text
    assert "bench_generate.py --device cuda --cuda-graph" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bench_times_the_triton_kernels(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_kernels.py"), "--quick", "--ops", "short_conv",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "bench_kernels.json").read_text())["results"]
    assert rows and all(r["backend"] == "triton" and r["ours_ms"] > 0 and r["theirs_ms"] > 0 for r in rows)
    assert all(r["ours_peak_bytes"] >= 0 and r["target_met"] in (True, False) for r in rows)
    assert "Triton numbers need a GPU" not in (tmp_path / "bench_kernels.md").read_text()
