#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), check the code (ruff lint + format, mypy), then run the whole test
# suite. Arguments go to pytest. pytest exits non-zero when no test ran.
# A full run (no arguments) then builds the C kernels once more with AddressSanitizer (their own cache)
# and runs the kernel tests and the malformed-file suite against that build: no read or write out of bounds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
mypy
python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then
    asan="$(${CC:-cc} -print-file-name=libasan.so)"
    if [ -f "$asan" ]; then
        cache="$(mktemp -d)"
        trap 'rm -rf "$cache"' EXIT
        # python is not instrumented: preload the sanitizer's runtime (and libstdc++, whose exceptions it intercepts)
        PRUNING_TOOLS_CACHE="$cache" PRUNING_TOOLS_SANITIZE=address PRUNING_TOOLS_KERNEL=native \
            LD_PRELOAD="$asan $(${CC:-cc} -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0 \
            python -m pytest -q -p no:cacheprovider tests/native tests/inference -k "not torch and not compile"
    else
        echo "no AddressSanitizer runtime for ${CC:-cc}: the sanitized kernel tests are skipped"
    fi
fi
