#!/usr/bin/env bash
# Set up on a fresh machine and run the whole test suite (slow tests included), offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
python -m pytest "$@"
