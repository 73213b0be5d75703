#!/usr/bin/env bash
# One-shot check on a lent GPU machine (one GPU, at most about 10 minutes with the default timeouts, no network):
#   1. nvidia-smi;
#   2. the GPU and kernel tests: pytest -q tests -k "gpu or kernel" (at most TEST_TIMEOUT s);
#   3. the kernel microbenchmarks: scripts/bench_kernels.py (at most BENCH_TIMEOUT s; it rewrites its
#      report after every row, so a cut-short run still leaves the finished rows);
#   4. decoding tokens/s, eager and by CUDA graph: scripts/bench_generate.py --cuda-graph on a few
#      fixed-state models (at most GENERATE_TIMEOUT s; GENERATE_ARGS replaces the model and size options).
# A failing or timed-out step does not stop the next one. Logs and reports go to
# scripts/results/cuda/ (gpu_check/*.log, bench_kernels.json, bench_kernels.md) and, when $OUT is set
# (the device tool returns what is written there), are copied to $OUT as well.
#
#   bash scripts/gpu_check.sh                                  # from any folder
#   TEST_TIMEOUT=120 BENCH_TIMEOUT=120 BENCH_ARGS="--quick" bash scripts/gpu_check.sh
# (RESULTS=folder overrides scripts/results/cuda, e.g. for a dry run on a CPU.)
set -u

cd "$(dirname "$0")/.." || exit 1
TEST_TIMEOUT="${TEST_TIMEOUT:-240}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-180}"
BENCH_ARGS="${BENCH_ARGS:-}"
GENERATE_TIMEOUT="${GENERATE_TIMEOUT:-150}"
GENERATE_ARGS="${GENERATE_ARGS:---mixers s4d mamba mamba2 gla gated_deltanet hyena --batches 1 8 --rounds 2}"
RESULTS="${RESULTS:-scripts/results/cuda}"
LOGS="$RESULTS/gpu_check"
mkdir -p "$LOGS"

if [ -f .venv/bin/activate ]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi

echo "== nvidia-smi"
nvidia-smi 2>&1 | tee "$LOGS/nvidia-smi.log"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')" \
    2>&1 | tee "$LOGS/versions.log"

echo "== pytest -k 'gpu or kernel' (timeout ${TEST_TIMEOUT} s)"
timeout -k 10 "$TEST_TIMEOUT" "$PY" -m pytest -q tests -k "gpu or kernel" -p no:cacheprovider \
    >"$LOGS/pytest.log" 2>&1
TEST_RC=$?
tail -n 40 "$LOGS/pytest.log"
echo "pytest exit status: $TEST_RC (124: timed out)"

echo "== bench_kernels (timeout ${BENCH_TIMEOUT} s)"
# --budget stops starting new cases a little before the timeout, so the report is complete as far as it got.
# shellcheck disable=SC2086
timeout -k 10 "$BENCH_TIMEOUT" "$PY" scripts/bench_kernels.py --out "$RESULTS" \
    --budget "$((BENCH_TIMEOUT * 3 / 4))" $BENCH_ARGS >"$LOGS/bench_kernels.log" 2>&1
BENCH_RC=$?
cat "$LOGS/bench_kernels.log"
echo "bench_kernels exit status: $BENCH_RC (124: timed out)"

echo "== bench_generate --cuda-graph (timeout ${GENERATE_TIMEOUT} s)"
# shellcheck disable=SC2086
timeout -k 10 "$GENERATE_TIMEOUT" "$PY" scripts/bench_generate.py --device cuda --cuda-graph \
    --out "$RESULTS/generate" $GENERATE_ARGS >"$LOGS/bench_generate.log" 2>&1
GENERATE_RC=$?
tail -n 30 "$LOGS/bench_generate.log"
echo "bench_generate exit status: $GENERATE_RC (124: timed out)"

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp -r "$LOGS" "$OUT/" 2>/dev/null
    cp "$RESULTS"/bench_kernels.json "$RESULTS"/bench_kernels.md "$OUT/" 2>/dev/null
    cp -r "$RESULTS/generate" "$OUT/" 2>/dev/null
    echo "copied logs and reports to $OUT"
fi
echo "== summary: pytest $TEST_RC, bench_kernels $BENCH_RC, bench_generate $GENERATE_RC"
[ "$TEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ] && [ "$GENERATE_RC" -eq 0 ]
