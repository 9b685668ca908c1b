#!/usr/bin/env bash
# Install what is needed (runtime + test tools, first run only), then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
exec .venv/bin/python -m pytest "$@"
