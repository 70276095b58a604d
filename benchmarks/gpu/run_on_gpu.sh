#!/usr/bin/env bash
# The GPU benchmark, run on the GPU node from the repository root (prepare with python -m benchmarks.gpu.carry):
#
#   benchmarks/gpu/run_on_gpu.sh OUTDIR            # on the GPU node: 256x256 and 512x512 mocks
#   SIDE=32 BIG=64 benchmarks/gpu/run_on_gpu.sh /tmp/dry   # dry run on a CPU (small cubes; GPU rows noted as missing)
#
# Stages, each under its own time limit so one failure leaves the others' results:
#   install the carried wheels (.carry/whl) into a target folder and the E-MILES cache (.carry/ssp);
#   survey-proc bench on a SIDE x SIDE mock (CPU workers, pPXF, then the GPU two ways: local-cuda and CPU
#   processes sharing it); the gpu-marked tests; the model alone on the GPU on a BIG x BIG mock, then on
#   SIDE x SIDE in regions of 64 x 64 spaxels. All inside BUDGET seconds (later stages get what is left).
# Into OUTDIR (8 files at most come back from the node): bench-gpu.{json,md,png}, bench-gpu-big.json,
# bench-gpu-chunk64.json, dmon.txt (nvidia-smi dmon), run.log (with the tests' output), extras.tar.gz (compare
# figures).
set -u
# a session of our own, so that reap() can end this run's stray Dask workers and no one else's
[ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] || exec setsid --wait bash "$0" "$@"
OUTDIR=$(mkdir -p "${1:?usage: run_on_gpu.sh OUTDIR}" && cd "$1" && pwd)
SIDE=${SIDE:-256}
BIG=${BIG:-512}
PPXF=${PPXF:-128}
WORK=${WORK:-/tmp/survey-proc-gpu}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
mkdir -p "$WORK"
exec > >(tee -a "$OUTDIR/run.log") 2>&1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
stage() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }
# Dask workers a timed-out stage left behind (spawned by multiprocessing) would hold cores and the GPU
# seconds a stage may take: its cap, or what is left of BUDGET (default 540 s, inside the node's 600 s per command)
DEADLINE=$((SECONDS + ${BUDGET:-540}))
allow() { local left=$((DEADLINE - SECONDS - 20)); [ "$left" -lt 5 ] && left=5; [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
reap() { pkill -9 -s $$ -f "multiprocessing.(spawn|forkserver)" 2>/dev/null; true; }

PY=${PY:-python3}
stage "install"
if ls .carry/whl/*.whl >/dev/null 2>&1 && $PY -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    .carry/whl/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .carry/whl, or not Python 3.12: using $PY's own packages (a dry run)"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
if ls .carry/ssp/*.npz >/dev/null 2>&1; then
  export SURVEY_PROC_CACHE="$WORK/cache"
  mkdir -p "$SURVEY_PROC_CACHE/ssp" && cp .carry/ssp/*.npz "$SURVEY_PROC_CACHE/ssp/"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
nproc; free -g | head -2
$PY - <<'EOF' || { echo "imports failed"; exit 1; }
import importlib
import sys
missing = []
for name in ("numpy", "torch", "numba", "xarray", "pandas", "zarr", "numcodecs", "dask", "distributed", "dask_cuda",
             "cuda.core", "astropy", "extinction", "pydl", "ppxf", "pynvml", "scipy", "survey_proc"):
    try:
        m = importlib.import_module(name)
        print(f"{name:12s} {getattr(m, '__version__', '?')}")
    except Exception as exc:  # dask_cuda may fail alone: the local-cuda rows are then noted as not measured
        print(f"{name:12s} FAILED: {type(exc).__name__}: {exc}")
        missing.append(name)
import torch
print("cuda:", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
sys.exit(bool(set(missing) - {"dask_cuda", "cuda.core"}))
EOF

if command -v nvidia-smi >/dev/null; then
  nvidia-smi dmon -s pucm -o T > "$OUTDIR/dmon.txt" 2>&1 &
  DMON=$!
fi

stage "bench: ${SIDE}x${SIDE} mock, CPU workers, pPXF on $PPXF spectra, the GPU two ways"
cores=$(nproc)
timeout --kill-after=10 $(allow 300) $PY -m survey_proc bench --workers "$cores" --sizes "$SIDE" --main-size "$SIDE" --ppxf-spectra "$PPXF" \
  --json "$WORK/results/bench-gpu.json" --workdir "$WORK/bench"
echo "bench rc $?"; reap

stage "gpu-marked tests"
timeout --kill-after=10 $(allow 150) $PY -m pytest -m gpu -p no:cacheprovider -q -rA tests 2>&1 | tail -40; reap

stage "the model alone on the GPU: ${BIG}x${BIG} mock"
timeout --kill-after=10 $(allow 150) $PY -m benchmarks.gpu.big --side "$BIG" --workdir "$WORK/bench" --json "$WORK/results/bench-gpu-big.json"
echo "big rc $?"; reap

stage "regions of 64x64 spaxels (4,096 spectra a task) on the GPU: ${SIDE}x${SIDE} mock"
timeout --kill-after=10 $(allow 100) $PY -m benchmarks.gpu.big --side "$SIDE" --chunk 64 --workdir "$WORK/bench" \
  --json "$WORK/results/bench-gpu-chunk64.json"
echo "chunk64 rc $?"

stage "collect"
[ -n "${DMON:-}" ] && kill "$DMON" 2>/dev/null
for f in bench-gpu.json bench-gpu.md bench-gpu.png bench-gpu-big.json bench-gpu-chunk64.json; do
  [ -f "$WORK/results/$f" ] && cp "$WORK/results/$f" "$OUTDIR/"
done
[ -d "$WORK/results" ] && tar -czf "$OUTDIR/extras.tar.gz" -C "$WORK/results" --exclude='*.scratch' . 2>/dev/null
ls -la "$OUTDIR"
