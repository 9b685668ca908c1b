#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU (no internet needed), at most 8 minutes
# (tests <= 150 s, benchmark <= 330 s; runs not started within 270 s are reported as such):
#   1. find a python whose torch sees CUDA (else try `pip install torch==2.13.0`, else stop);
#   2. tests/engines/test_vectorized.py on CUDA: engine=vectorized against the sequential
#      in-process engine on the same GPU (TF32 off in the test);
#   3. benchmarks/throughput.py, workloads a, b, c on floor / inprocess / vectorized (flower too
#      when flwr is installed there), 4 rounds each.
# Results go to $OUT (default ./gpu-out): env.txt, test.log, bench.log, throughput.json and
# performance.md (a section to append to docs/performance.md).
# Before: benchmarks/prepare_gpu_carry.sh here; carry ["data", ".gpu_site"] with the tree.
# GPU_CHECK_DRY=1 rehearses the script's mechanics on this CPU (.venv, short test, workload a).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

has_cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
PY="" DEVICE=cuda TESTS="cuda" BENCH="--workloads b,a,c --rounds 4"
if [ -n "${GPU_CHECK_DRY:-}" ]; then
  PY=$PWD/.venv/bin/python DEVICE=cpu TESTS="cpu and first_step" BENCH="--workloads a --engines floor,vectorized --rounds 3"
fi
for cand in python3 python /opt/torch/.venv/bin/python3 .venv/bin/python; do
  [ -n "$PY" ] && break
  if command -v "$cand" >/dev/null 2>&1 && has_cuda_torch "$cand"; then PY=$(command -v "$cand"); break; fi
done
if [ -z "$PY" ]; then
  echo "no python here has a torch that sees CUDA; trying: python3 -m pip install torch==2.13.0"
  if python3 -m pip install -q torch==2.13.0 && has_cuda_torch python3; then
    PY=$(command -v python3)
  else
    echo "GPU CHECK NOT RUN: no CUDA-enabled torch, and pip could not install one (no index reachable?)." | tee "$OUT/env.txt"
    exit 3
  fi
fi
# the tree itself (no install needed) and the carried pure-Python packages
export PYTHONPATH="$PWD:$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$PY" -c '
import importlib.util as u
print(" ".join(m for m in ("numpy", "tqdm", "matplotlib", "pytest", "hydra", "omegaconf", "yaml") if u.find_spec(m) is None))')
{ echo "python: $PY"; "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null
  echo "missing python packages: ${missing:-none}"; nproc; } | tee "$OUT/env.txt"

# Fashion-MNIST: the carried copy, where fedlabel looks for it (tests) and as --data-root
DATA=""
if [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  DATA=$PWD/data/fashion-mnist
  mkdir -p ~/.cache/fedlabel/fashion-mnist && cp -n data/fashion-mnist/*.gz ~/.cache/fedlabel/fashion-mnist/
elif [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "GPU CHECK NOT RUN: no Fashion-MNIST (carry data/, made by benchmarks/prepare_gpu_carry.sh)" | tee -a "$OUT/env.txt"
  exit 4
fi

echo "== 1. vectorized == sequential on $DEVICE"
timeout 150 "$PY" -m pytest tests/engines/test_vectorized.py -q -p no:cacheprovider -k "$TESTS" -rA 2>&1 | tee "$OUT/test.log"
test_rc=${PIPESTATUS[0]}

echo "== 2. throughput"
timeout 330 "$PY" benchmarks/throughput.py $BENCH --device $DEVICE --timeout-s 120 --budget-s 270 \
  ${DATA:+--data-root "$DATA"} --doc "$OUT/performance.md" --json "$OUT/throughput.json" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "test exit $test_rc, benchmark exit $bench_rc; results in $OUT"
[ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ]
