#!/usr/bin/env bash
# Set up on a fresh machine, build the default data from nothing (corpus, tokenizer, both
# models, traces, analysis caches) and render the site. Every step is cached: a second run
# only renders. Needs the PyPI, Debian and npm registries (apt-get, npm) and, to render,
# Quarto >= 1.5 on the PATH (https://quarto.org/docs/get-started/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
python -m moe_lib build "$@"
if command -v quarto >/dev/null; then
    quarto render
else
    echo "Quarto is not on the PATH: the data are built; install Quarto and run 'quarto render'." >&2
    exit 1
fi
