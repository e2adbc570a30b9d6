#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -m "not slow"`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec "$VENV/bin/python" -m pytest "$@"
