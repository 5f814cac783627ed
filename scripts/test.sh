#!/usr/bin/env bash
# Install loraq with its test extras into .venv (CPU torch) and run the linter, the type checker and the whole
# test suite.
# Arguments are passed to pytest, e.g. `scripts/test.sh tests/cli -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LORAQ_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -e ".[test]"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
# pytest exits 5 when it collected no tests; that is a failure here, never a pass.
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
