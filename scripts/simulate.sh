#!/usr/bin/env bash
# Install what is needed (first run only), then run `fedlabel simulate` with any overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
exec .venv/bin/fedlabel simulate "$@"
