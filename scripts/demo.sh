#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), then prune the simple CNN on MNIST with the demo's defaults:
# bank-balanced 90 %, bank 64, 8 epochs, data from data/mnist/ (offline). Results in runs/demo/.
# Extra arguments go to `pruning-tools demo` (e.g. --sparsity 0.95, --balance none, --limit 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
pruning-tools demo --out runs/demo "$@"
