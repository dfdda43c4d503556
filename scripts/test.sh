#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), check the code (ruff lint + format, mypy), then run the whole test
# suite. Arguments go to pytest. pytest exits non-zero when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
mypy
python -m pytest -q "$@"
