#!/usr/bin/env bash
# Create .venv with what the demos need: PyTorch (the CPU build), the package and its `plots` extra.
# The test environments (everything else) are made by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0 -e ".[plots]"
