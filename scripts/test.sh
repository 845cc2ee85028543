#!/usr/bin/env bash
# Install and run the test suite (fast tests with a fake encoder + marked real-model/real-data tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
VENV=${TEXTGUIDE_VENV:-.venv}
"$VENV/bin/python" -m pytest -q "$@"
