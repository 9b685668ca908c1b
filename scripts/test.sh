#!/usr/bin/env bash
# Install what is needed (runtime + test tools, first run only), then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
# Tests run in 3 parallel processes (pytest-xdist; the slow ones first, tests/conftest.py): most
# of the suite's time is Flower's, Ray's and the deployments' processes starting and polling,
# which overlap on 2 cores. FEDLABEL_TEST_WORKERS=0 runs everything in this one process.
# Each process computes with one thread: more threads than cores spin against each other
# (the batched-engine tests took 441 s at torch's default threads, 71 s at one, same machine).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -n "${FEDLABEL_TEST_WORKERS:-3}" "$@"
