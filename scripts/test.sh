#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. pytest exits non-zero when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
