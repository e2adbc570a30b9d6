#!/usr/bin/env bash
# Creates ./.venv with Python 3.11 and installs effnetv2_tf with the CPU build
# of TensorFlow (EXTRAS=gpu or EXTRAS=tpu for the others). Re-installs only
# when setup.py changes. Source it: `source scripts/setup_env.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && \
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "effnetv2_tf needs Python 3.11 (set PYTHON=/path/to/python3.11)." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $PY ..."
  "$PY" -m venv .venv
fi
EXTRAS="${EXTRAS:-cpu,test}"
stamp=".venv/.installed-$(cat setup.py | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "Installing effnetv2_tf[$EXTRAS] into .venv (first run: a few minutes) ..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
