#!/usr/bin/env bash
# Set up on a fresh machine and render the site.
#   bash scripts/main.sh                  # from the committed caches: minutes, no training, no weights
#   bash scripts/main.sh --from-scratch   # build everything first: corpus, models, traces, tables
# Other arguments go to `python -m moe_lib build` (see its --help). Needs Quarto >= 1.5 on the
# PATH (https://quarto.org/docs/get-started/); from scratch also the PyPI, Debian and npm
# registries (apt-get, npm). Both are checked first, in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v quarto >/dev/null; then
    echo "Quarto is not on the PATH: install Quarto >= 1.5 (https://quarto.org/docs/get-started/), then rerun." >&2
    exit 1
fi
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
python -m moe_lib build "$@"
quarto render
