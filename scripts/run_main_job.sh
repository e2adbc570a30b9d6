#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the main job: EfficientNetV2-B0
# trained with 4 progressive stages on scikit-learn's digits, evaluated with
# its EMA weights, exported as a SavedModel and plotted (runs/digits/).
# Arguments replace the defaults and go to main.py, e.g.
#   bash scripts/run_main_job.sh --model=efficientnetv2-s --dataset_cfg=imagenet ...
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
if [[ $# -eq 0 ]]; then
  # A rerun resumes (or, finished, evaluates again) and replaces its export.
  "$VENV/bin/python" main.py --model=efficientnetv2-b0 --dataset_cfg=digits \
    --model_dir=runs/digits --export_dir=runs/digits/export --overwrite_export
  # schedule.png and learning_curve.png from runs/digits/summary.json
  exec "$VENV/bin/python" -m effnetv2_tf.plot --model_dir=runs/digits
fi
exec "$VENV/bin/python" main.py "$@"
