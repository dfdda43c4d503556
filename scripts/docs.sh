#!/usr/bin/env bash
# Build the documentation site into site/ (mkdocs.yml, pages in docs/), failing on any warning: a broken
# link, a missing page, an API entry that does not resolve. Arguments go to `mkdocs build`.
# Uses the active environment; `bash scripts/setup.sh && . .venv/bin/activate` sets one up.
set -euo pipefail
cd "$(dirname "$0")/.."
NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --site-dir site "$@"  # no notice about the theme's successor
