#!/usr/bin/env bash
# Accuracy runs on a lent GPU machine (no internet), within one time budget:
#   - a share of benchmarks/accuracy.py's grid (GRID_ARGS), JOBS runs at a time on the GPU with
#     engine=vectorized. The default is the FedLabel family, the grid's costliest runs on CPUs
#     (about 900 s each there); on an H200, 16 at a time took about 1.9 s per round each.
#     Methods without a batched form fall back to one client at a time (slow on a shared GPU).
#   - optionally the cross-silo experiment (configs/experiment/cross_silo.yaml, GroupNorm
#     ResNet-18): benchmarks/accuracy.py --experiment cross_silo, 100 rounds, seed 0, for the
#     methods in CROSS_SILO and FedAvg with 100% labels, all at once on the GPU. Its FedLabel run
#     took 19-22 s per round beside the grid and about 4 s alone; off by default.
# Runs completed anywhere before (their summaries are committed in benchmarks/runs/accuracy-tuned and
# benchmarks/runs/cross_silo, which travel with the working tree) are not run again; a rehearsal
# with a tiny config sets ARCHIVE to another folder, so as not to write over those.
# PRIOR (CROSS_SILO_PRIOR): a carried folder of unfinished run folders, which continue from their
# checkpoint (a ResNet-18 checkpoint is 45 MB, so at most one fits the 64 MiB carry).
# Every run checkpoints each round. Results come back in $OUT as acc.tgz.* and cross_silo.tgz.*:
# finished runs, and checkpoints of unfinished ones, which go on on any machine (engine and
# device may change on resume). Here, add the run folders that are not here yet:
#   mkdir -p /tmp/acc && cat <files_at>/acc.tgz.* | tar xz -C /tmp/acc
#   for d in /tmp/acc/*/; do [ -e outputs/bench/accuracy-tuned/$(basename $d) ] || cp -r $d outputs/bench/accuracy-tuned/; done
# (cross_silo.tgz.* likewise into outputs/bench/cross_silo) and rerun benchmarks/accuracy.py to
# continue, or --report-only (for cross-silo: the CROSS_SILO_ARGS below and --experiment cross_silo);
# either archives the finished ones into benchmarks/runs/ (commit them).
# Before: benchmarks/prepare_gpu_carry.sh here; carry ["data", ".gpu_site"].
#   OUT=$OUT BUDGET_S=480 bash benchmarks/gpu_accuracy.sh
# The cross-silo runs with the machine to themselves (no grid beside them):
#   OUT=$OUT BUDGET_S=540 JOBS=0 CROSS_SILO="fedlabel fedavg" bash benchmarks/gpu_accuracy.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
BUDGET_S=${BUDGET_S:-480}
JOBS=${JOBS:-16}  # grid runs at a time; 0: none
CROSS_SILO=${CROSS_SILO:-}  # methods, e.g. "fedlabel fedavg" (FedAvg with 100% labels comes with them)
CROSS_SILO_ARGS=${CROSS_SILO_ARGS:-"--rounds 100 --seeds 0 --alphas 0.1 --label-ratios 0.05 --no-sweeps"}
CROSS_SILO_EXTRA=${CROSS_SILO_EXTRA:-"device=cuda"}  # the experiment's in-process engine; or add engine=vectorized
# the tuned grid (docs/results.md; each method at its lr in benchmarks/tuned.json), FedLabel's family
GRID_ARGS=${GRID_ARGS:-"--alphas 0.1 1 --label-ratios 0.05 0.01 --seeds 0 1 2 --rounds 250 --methods fedlabel fedlabel_local_only fedlabel_global_only fedlabel_paper --no-reference --no-sweeps --no-paper-cell --seeds-first"}
GRID_NAME=${GRID_NAME:-accuracy-tuned}  # its archive: benchmarks/runs/$GRID_NAME
# the grid's runs on the GPU; methods without a batched form (13 of them sharing the GPU ran 5x slower
# per run than on one CPU core here, docs/results-gpu.md) may do better on the machine's CPU cores,
# one run per core: GRID_EXTRA="device=cpu engine=inprocess" JOBS=16
GRID_EXTRA=${GRID_EXTRA:-"device=cuda engine=vectorized"}
PRIOR=${PRIOR:+$(realpath "$PRIOR")}  # absolute: read again from inside $WORK/acc
CROSS_SILO_PRIOR=${CROSS_SILO_PRIOR:+$(realpath "$CROSS_SILO_PRIOR")}
ARCHIVE=${ARCHIVE:-benchmarks/runs}
WORK=/tmp/acc-work
mkdir -p "$OUT" "$WORK/acc" "$WORK/cross_silo" ~/.cache/fedlabel/fashion-mnist
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$(command -v python3)}
cp -n data/fashion-mnist/*.gz ~/.cache/fedlabel/fashion-mnist/ 2>/dev/null
[ -n "$PRIOR" ] && cp -r "$PRIOR"/. "$WORK/acc/"
[ -n "$CROSS_SILO_PRIOR" ] && cp -r "$CROSS_SILO_PRIOR"/. "$WORK/cross_silo/"
{ "$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  nproc; grep -m1 "model name" /proc/cpuinfo; } | tee "$OUT/env.txt"

groups=()  # each benchmark in its own process group, so that the budget ends its runs too (and nothing else)
if [ -n "$CROSS_SILO" ]; then  # a second call on a still-warm machine (same /tmp) continues the first's runs
  n=$(($(wc -w <<<"$CROSS_SILO") + 1))
  setsid "$PY" benchmarks/accuracy.py --experiment cross_silo $CROSS_SILO_ARGS --methods $CROSS_SILO --jobs "$n" \
    --no-report --out "$WORK/cross_silo" --archive "$ARCHIVE/cross_silo" --extra $CROSS_SILO_EXTRA >"$OUT/cross_silo.log" 2>&1 &
  groups+=($!)
fi
if [ "$JOBS" -gt 0 ]; then  # JOBS=0: no grid (the cross-silo runs alone)
  setsid "$PY" benchmarks/accuracy.py $GRID_ARGS --jobs "$JOBS" --no-report --out "$WORK/acc" --archive "$ARCHIVE/$GRID_NAME" \
    --extra $GRID_EXTRA >"$OUT/grid.log" 2>&1 &
  groups+=($!)
fi
running() { for g in ${groups[@]+"${groups[@]}"}; do kill -0 "$g" 2>/dev/null && return 0; done; return 1; }
for ((i = 0; i < BUDGET_S; i++)); do running || break; sleep 1; done
for g in ${groups[@]+"${groups[@]}"}; do kill -KILL -- "-$g" 2>/dev/null && echo "stopped at the budget: group $g"; done

# finished runs without model/checkpoint (new ones only), unfinished ones with their checkpoint
pack() {  # pack DIR PRIOR NAME
  (cd "$1" && for d in */; do
     d=${d%/}
     [ -n "$2" ] && grep -q '"status": "completed"' "$2/$d/summary.json" 2>/dev/null && continue  # not new
     if grep -q '"status": "completed"' "$d/summary.json" 2>/dev/null; then echo "$d/summary.json"; echo "$d/rounds.csv"
     else find "$d" -maxdepth 1 \( -name '*.json' -o -name checkpoint.pt -o -name rounds.csv \); fi
   done | tar czf - -T - | split -b 15m - "$OUT/$3.tgz.")
}
[ "$JOBS" -gt 0 ] && pack "$WORK/acc" "$PRIOR" acc
[ -n "$CROSS_SILO" ] && pack "$WORK/cross_silo" "$CROSS_SILO_PRIOR" cross_silo
grep -h '^done\|^FAILED' "$OUT"/*.log; ls -la "$OUT"
