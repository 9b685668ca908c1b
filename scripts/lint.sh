#!/usr/bin/env bash
# The lint gate (CI runs it): ruff format and lint at line length 100 over the code, and mypy over
# the library's core (the pure math: training, augmentation, aggregation, the algorithms, privacy
# accounting and noise, label proportions, partitions, batching). Installs the dev tools on first
# use.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev >/dev/null
code=(fedlabel server clients tests benchmarks configs)
.venv/bin/ruff format --check "${code[@]}"
.venv/bin/ruff check "${code[@]}"
core=(
  fedlabel/training.py fedlabel/calibration.py fedlabel/augment.py fedlabel/robust.py fedlabel/models.py fedlabel/stopping.py
  fedlabel/algorithms fedlabel/llp fedlabel/privacy/accountant.py fedlabel/privacy/noise.py
  fedlabel/privacy/central.py fedlabel/data/partition.py fedlabel/data/bags.py fedlabel/data/label_dp.py
  fedlabel/compare.py fedlabel/runset.py fedlabel/privacy_sweep.py fedlabel/report.py
)
.venv/bin/mypy --ignore-missing-imports --follow-imports=silent "${core[@]}"
