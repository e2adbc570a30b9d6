#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the main job.
# Extra arguments go to main.py, e.g. `--model=efficientnetv2-s`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec .venv/bin/python main.py "$@"
