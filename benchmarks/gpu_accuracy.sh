#!/usr/bin/env bash
# Accuracy runs on a lent GPU machine (16 cores, no internet), within one time budget:
#   - the cross-silo experiment (configs/experiment/cross_silo.yaml: 10 clients, all every round,
#     Dir(0.1), 5% labels, GroupNorm ResNet-18) on the GPU, one run per method in CROSS_SILO;
#   - a share of benchmarks/accuracy.py's grid (GRID_ARGS) on the remaining CPU cores, one torch
#     thread per run, exactly as on any CPU machine.
# Every run checkpoints each round, so what the budget cuts off continues elsewhere:
# results come back in $OUT as acc.tgz.* (the grid, checkpoints of unfinished runs included) and
# cross_silo.tgz (summaries only); here, merge them with
#   cat <files_at>/acc.tgz.* | tar xz -C outputs/bench/accuracy
#   mkdir -p outputs/bench/cross_silo && tar xzf <files_at>/cross_silo.tgz -C outputs/bench/cross_silo
# and rerun benchmarks/accuracy.py with the same arguments to continue or report.
# Before: benchmarks/prepare_gpu_carry.sh here; carry ["data", ".gpu_site"] with the tree.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
BUDGET_S=${BUDGET_S:-480}
JOBS=${JOBS:-13}
CROSS_SILO=${CROSS_SILO:-"fedlabel fedavg fedavg_100"}
GRID_ARGS=${GRID_ARGS:-"--alphas 0.1 --label-ratios 0.05 0.01 0.2 --methods fedavg fedprox --sweeps-first"}
WORK=/tmp/acc-work
mkdir -p "$OUT" "$WORK/acc" "$WORK/cross_silo" ~/.cache/fedlabel/fashion-mnist
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$(command -v python3)}
cp -n data/fashion-mnist/*.gz ~/.cache/fedlabel/fashion-mnist/
{ "$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  nproc; grep -m1 "model name" /proc/cpuinfo; } | tee "$OUT/env.txt"

pids=()
for m in $CROSS_SILO; do
  algo=${m%_100}; ratio=()
  [ "$m" != "$algo" ] && ratio=(data.label_ratio=1)
  timeout "$BUDGET_S" "$PY" -m fedlabel simulate experiment=cross_silo algorithm="$algo" "${ratio[@]}" seed=0 \
    device=cuda engine=vectorized output_dir="$WORK/cross_silo/$m" >"$WORK/cross_silo/$m.log" 2>&1 &
  pids+=($!)
done
# its own process group, so that the budget ends the grid's runs too (and nothing else)
setsid "$PY" benchmarks/accuracy.py $GRID_ARGS --jobs "$JOBS" --no-report --out "$WORK/acc" >"$OUT/grid.log" 2>&1 &
grid=$!
for ((i = 0; i < BUDGET_S; i++)); do kill -0 "$grid" 2>/dev/null || break; sleep 1; done
kill -KILL -- "-$grid" 2>/dev/null && echo "grid stopped at the budget" >>"$OUT/grid.log"
wait "${pids[@]}"

for m in $CROSS_SILO; do tail -3 "$WORK/cross_silo/$m.log"; done | tee "$OUT/cross_silo.txt"
(cd "$WORK/cross_silo" && tar czf "$OUT/cross_silo.tgz" --exclude='*.pt' --exclude='*.png' .)
# the grid: finished runs without model/checkpoint, unfinished ones with their checkpoint
(cd "$WORK/acc" && for d in */; do
   d=${d%/}
   if grep -q '"status": "completed"' "$d/summary.json" 2>/dev/null; then echo "$d/summary.json"; echo "$d/rounds.csv"
   else find "$d" -maxdepth 1 \( -name '*.json' -o -name checkpoint.pt -o -name rounds.csv \); fi
 done | tar czf - -T - | split -b 15m - "$OUT/acc.tgz.")
grep -c '^done' "$OUT/grid.log"; ls -la "$OUT"
