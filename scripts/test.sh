#!/usr/bin/env bash
# The test command: every environment of noxfile.py set up from scratch and run (the PyTorch stack with
# lint, types, the whole suite and the sanitized kernels; MXNet in its own environment).
# Arguments go to pytest: bash scripts/test.sh tests/test_masks.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .nox-runner
.nox-runner/bin/python -m pip install --quiet --upgrade pip
.nox-runner/bin/python -m pip install --quiet nox==2026.10.20
exec .nox-runner/bin/nox --no-reuse-existing-virtualenvs -- "$@"
