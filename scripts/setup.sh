#!/usr/bin/env bash
# Create .venv and install moe_lib with everything the site and the tests need, from PyPI.
# Idempotent: a second run only checks. Used by scripts/main.sh, scripts/test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build on CPU-only machines.
# On a GPU machine, install the CUDA build of your choice before running this script.
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test]"
python -m ipykernel install --sys-prefix --name python3 >/dev/null
