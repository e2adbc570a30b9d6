#!/usr/bin/env bash
# Creates ./.venv with Python 3.11 and installs effnetv2_tf with the CPU build
# of TensorFlow (EXTRAS=gpu,test or EXTRAS=tpu,test for the others; VENV=DIR
# for another environment, e.g. VENV=.venv-tpu EXTRAS=tpu,test). Re-installs
# only when setup.py changes. Source it: `source scripts/setup_env.sh`.
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
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating $VENV with $PY ..."
  "$PY" -m venv "$VENV"
fi
EXTRAS="${EXTRAS:-cpu,test}"
stamp="$VENV/.installed-$(cat setup.py | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "Installing effnetv2_tf[$EXTRAS] into $VENV (first run: a few minutes) ..."
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
