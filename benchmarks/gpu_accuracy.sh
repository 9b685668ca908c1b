#!/usr/bin/env bash
# Accuracy runs on a lent GPU machine (no internet), within one time budget:
#   - a share of benchmarks/accuracy.py's grid (GRID_ARGS), JOBS runs at a time on the GPU with
#     engine=vectorized. The default is the FedLabel family, the grid's costliest runs on CPUs
#     (about 900 s each there); on an H200, 16 at a time took about 1.9 s per round each.
#     Methods without a batched form fall back to one client at a time (slow on a shared GPU).
#   - optionally the cross-silo experiment (configs/experiment/cross_silo.yaml, GroupNorm
#     ResNet-18), one run per method in CROSS_SILO. Its FedLabel run took 19-22 s per round
#     beside other work, so 100 rounds do not fit one lease; it is off by default.
# PRIOR: a folder of the grid's run folders to start from: completed ones (summary.json) are
# skipped, unfinished ones continue from their checkpoint (benchmarks/prepare_gpu_carry.sh
# writes the summaries of the runs finished here to outputs/gpu_carry/acc).
# Every run checkpoints each round. Results come back in $OUT as acc.tgz.* (the grid: finished
# runs, and checkpoints of unfinished ones, which go on on any machine: engine and device may
# change on resume) and cross_silo.tgz. Here, add the run folders that are not here yet:
#   mkdir -p /tmp/acc && cat <files_at>/acc.tgz.* | tar xz -C /tmp/acc
#   for d in /tmp/acc/*/; do [ -e outputs/bench/accuracy/$(basename $d) ] || cp -r $d outputs/bench/accuracy/; done
# and rerun benchmarks/accuracy.py to continue the grid, or --report-only.
# Before: benchmarks/prepare_gpu_carry.sh here; carry ["data", ".gpu_site", "outputs/gpu_carry"].
#   OUT=$OUT BUDGET_S=480 PRIOR=outputs/gpu_carry/acc bash benchmarks/gpu_accuracy.sh
# The cross-silo runs with the machine to themselves (no grid beside them):
#   OUT=$OUT BUDGET_S=540 JOBS=0 CROSS_SILO="fedlabel fedavg fedavg_100" bash benchmarks/gpu_accuracy.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
BUDGET_S=${BUDGET_S:-480}
JOBS=${JOBS:-16}  # grid runs at a time; 0: none
CROSS_SILO=${CROSS_SILO:-}  # e.g. "fedlabel fedavg fedavg_100"
CROSS_SILO_ENGINE=${CROSS_SILO_ENGINE:-vectorized}
GRID_ARGS=${GRID_ARGS:-"--alphas 0.1 1.0 --label-ratios 0.05 0.01 0.2 --methods fedlabel fedlabel_local_only fedlabel_global_only --no-reference --no-sweeps --seeds-first"}
# the grid's runs on the GPU; methods without a batched form (13 of them sharing the GPU ran 5x slower
# per run than on one CPU core here, docs/results-gpu.md) may do better on the machine's CPU cores,
# one run per core: GRID_EXTRA="device=cpu engine=inprocess" JOBS=16
GRID_EXTRA=${GRID_EXTRA:-"device=cuda engine=vectorized"}
PRIOR=${PRIOR:+$(realpath "$PRIOR")}  # absolute: read again from inside $WORK/acc
WORK=/tmp/acc-work
mkdir -p "$OUT" "$WORK/acc" "$WORK/cross_silo" ~/.cache/fedlabel/fashion-mnist
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$(command -v python3)}
cp -n data/fashion-mnist/*.gz ~/.cache/fedlabel/fashion-mnist/ 2>/dev/null
[ -n "$PRIOR" ] && cp -r "$PRIOR"/. "$WORK/acc/"
{ "$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  nproc; grep -m1 "model name" /proc/cpuinfo; } | tee "$OUT/env.txt"

pids=()
for m in $CROSS_SILO; do
  algo=${m%_100}; more=()
  [ "$m" != "$algo" ] && more=(data.label_ratio=1)
  # a second call on a still-warm machine (same /tmp) continues the first call's run
  [ -f "$WORK/cross_silo/$m/checkpoint.pt" ] && more+=(resume=true)
  timeout "$BUDGET_S" "$PY" -m fedlabel simulate experiment=cross_silo algorithm="$algo" "${more[@]}" seed=0 \
    device=cuda engine="$CROSS_SILO_ENGINE" output_dir="$WORK/cross_silo/$m" >"$WORK/cross_silo/$m.log" 2>&1 &
  pids+=($!)
done
if [ "$JOBS" -gt 0 ]; then  # JOBS=0: no grid (the cross-silo runs alone)
  # its own process group, so that the budget ends the grid's runs too (and nothing else)
  setsid "$PY" benchmarks/accuracy.py $GRID_ARGS --jobs "$JOBS" --no-report --out "$WORK/acc" \
    --extra $GRID_EXTRA >"$OUT/grid.log" 2>&1 &
  grid=$!
  for ((i = 0; i < BUDGET_S; i++)); do kill -0 "$grid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$grid" 2>/dev/null && echo "grid stopped at the budget" >>"$OUT/grid.log"
fi
wait ${pids[@]+"${pids[@]}"}

for m in $CROSS_SILO; do tail -3 "$WORK/cross_silo/$m.log"; done | tee "$OUT/cross_silo.txt"
(cd "$WORK/cross_silo" && tar czf "$OUT/cross_silo.tgz" --exclude='*.pt' --exclude='*.png' .)
# the grid: finished runs without model/checkpoint, unfinished ones with their checkpoint
(cd "$WORK/acc" && for d in */; do
   d=${d%/}
   [ -n "$PRIOR" ] && grep -q '"status": "completed"' "$PRIOR/$d/summary.json" 2>/dev/null && continue  # not new
   if grep -q '"status": "completed"' "$d/summary.json" 2>/dev/null; then echo "$d/summary.json"; echo "$d/rounds.csv"
   else find "$d" -maxdepth 1 \( -name '*.json' -o -name checkpoint.pt -o -name rounds.csv \); fi
 done | tar czf - -T - | split -b 15m - "$OUT/acc.tgz.")
grep -c '^done' "$OUT/grid.log"; ls -la "$OUT"
