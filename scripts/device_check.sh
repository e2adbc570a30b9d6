#!/usr/bin/env bash
# The checks that need an accelerator, in one command of under 10 minutes.
#
#   bash scripts/device_check.sh [OUT_DIR]     # default: device_check/
#
# CPU parts (everywhere): the XLA tests (tests/test_xla.py: the drivers'
# compiled train/eval steps against the plain ones, float32 and bfloat16)
# and the mixed-precision / multi-replica tests. GPU parts (when TensorFlow
# sees a GPU): the same tests on the GPU (mixed float16 with loss scaling,
# XLA, MirroredStrategy on the real devices), the XLA step benchmark and
# issue 7's comparison, benchmarks/train_step.py at V2-S 300 px with mixed
# float16 against keras.applications. Results: OUT_DIR/*.json and the
# pytest logs. Without a GPU it says so and exits 0 after the CPU parts.
# Uses the environment scripts/setup_env.sh makes (EXTRAS=gpu,test for
# the GPU build).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
out="${1:-device_check}"
mkdir -p "$out"
py="$VENV/bin/python"
gpus=$("$py" -c 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))' 2>/dev/null || echo 0)
echo "GPUs visible to TensorFlow: $gpus"

tests=(tests/test_xla.py tests/test_trainer.py tests/test_distributed.py
       tests/test_fused_bn.py tests/test_fused_optim.py)
status=0
"$py" -m pytest -q -p no:cacheprovider "${tests[@]}" \
  -k "xla or bfloat16 or float16 or loss_scale or mirrored or replica" \
  --junitxml="$out/tests.xml" 2>&1 | tee "$out/tests.log" || status=1

if [[ "$gpus" == "0" ]]; then
  echo "device_check: no GPU found; ran the CPU parts only (results in $out)."
  exit "$status"
fi

PYTHONPATH=. "$py" benchmarks/xla_step.py --model=efficientnetv2-s \
  --image_size=300 --batch_size=32 --steps=10 --json_out="$out/xla_step.json" \
  || status=1
PYTHONPATH=. "$py" benchmarks/train_step.py --models=s --image_size=300 \
  --batch_size=64 --dtype_policy=mixed_float16 --steps=20 --rounds=3 \
  --ours=default --json_out="$out/train_step_gpu.json" || status=1
echo "device_check: results in $out (exit $status)."
exit "$status"
