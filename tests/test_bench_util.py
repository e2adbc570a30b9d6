"""benchmarks/bench_util.py: the kernel groups of profile_step.py's side by
side profile, the missing-PyTorch message of peers.py, the library's
optimizers the benchmarks train with, and the results JSON."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

SCRIPT = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks" /
          "bench_util.py")
spec = importlib.util.spec_from_file_location("bench_util", SCRIPT)
bench_util = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_util)

CONV, BN, SWISH, IDLE, OTHER = (g for g, _ in bench_util.KERNEL_GROUPS)


def test_tensorflow_op_types_fall_into_their_kernel_groups():
  # Op types as xprof names them in a V2-S train step (benchmarks/README.md).
  ops = {"IDLE": 500.0, "_MklMatMul": 300.0,
         "_MklNativeConv2DBackpropFilter": 100.0,
         "_MklNativeConv2DBackpropInput": 90.0, "_MklNativeConv2D": 50.0,
         "_MklNativeDepthwiseConv2dNativeBackpropInput": 20.0,
         "_MklNativeFusedBatchNormGradV3": 54.0,
         "_MklNativeFusedBatchNormV3": 43.0, "Sigmoid": 49.0,
         "SigmoidGrad": 1.0, "_MklSwish": 12.0, "Mul": 28.0, "Sub": 5.0,
         "ResourceApplyKerasMomentum": 7.0}
  groups = bench_util.kernel_groups(ops)
  assert groups == {CONV: 560.0, BN: 97.0, SWISH: 62.0, IDLE: 500.0,
                    OTHER: 40.0}


def test_pytorch_operators_fall_into_their_kernel_groups():
  # Operator names of torch.profiler's key_averages for timm's model.
  ops = {"aten::convolution_backward": 295.0,
         "aten::mkldnn_convolution": 137.0, "aten::addmm": 1.0,
         "autograd::engine::evaluate_function: ConvolutionBackward0": 4.0,
         "aten::native_batch_norm_backward": 69.0,
         "aten::native_batch_norm": 43.0,
         "NativeBatchNormBackward0": 1.5, "aten::silu_backward": 75.0,
         "aten::silu_": 35.0, "aten::copy_": 27.5, "aten::add_": 25.5,
         "Optimizer.step#SGD.step": 6.0}
  groups = bench_util.kernel_groups(ops)
  assert groups == {CONV: 437.0, BN: 113.5, SWISH: 110.0, IDLE: 0.0,
                    OTHER: 59.0}


def test_a_python_without_torch_skips_the_timm_rows_with_the_install_line(
    capsys):
  if subprocess.run([sys.executable, "-c", "import torch, timm"],
                    capture_output=True, check=False).returncode == 0:
    pytest.skip("this Python imports torch and timm")
  assert bench_util.torch_python(None) is None
  out = capsys.readouterr().out
  assert "timm rows skipped" in out and "torch==2.14.1" in out
  with pytest.raises(SystemExit, match="cannot import torch and timm"):
    bench_util.torch_python(sys.executable)


def test_optimizers_are_the_papers_rmsprop_and_sgd_with_momentum_at_lr_001():
  rmsprop = bench_util.build_optimizer("rmsprop")
  assert type(rmsprop) is keras.optimizers.RMSprop  # Keras' own class
  assert (rmsprop.rho, rmsprop.momentum, rmsprop.epsilon) == (0.9, 0.9, 1e-3)
  assert float(rmsprop.learning_rate) == pytest.approx(0.01)
  sgd = bench_util.build_optimizer()
  assert type(sgd) is keras.optimizers.SGD
  assert (sgd.momentum, sgd.nesterov) == (0.9, False)
  fused = bench_util.build_optimizer("rmsprop", fused=True)
  assert type(fused).__name__ == "FusedRMSprop"
  # timm's side gets the same numbers over the worker's pipe.
  assert bench_util.optimizer_values() == {
      "learning_rate": 0.01, "momentum": 0.9, "rho": 0.9, "epsilon": 1e-3}


def test_the_torch_setup_command_carries_the_optimizer_values():
  worker = object.__new__(bench_util.TorchWorker)  # no process
  worker.ask = lambda **command: command
  sent = worker.setup(task="train", model="tf_efficientnetv2_b0")
  assert sent == {"cmd": "setup", "task": "train",
                  "model": "tf_efficientnetv2_b0",
                  "optimizer": bench_util.optimizer_values()}


def test_lean_step_defaults_to_sgd_with_momentum():
  # A zero dense layer on x = 1, label 0 of 2: softmax [0.5, 0.5], so the
  # gradient of kernel and bias is [-0.5, 0.5]; SGD's first step moves
  # them by -0.01 times it. The second step's gradient is [p - 1, 1 - p]
  # with p = sigmoid(0.02), and the velocity keeps 0.9 of the first move.
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(
      2, kernel_initializer="zeros", bias_initializer="zeros")])
  step = bench_util.lean_train_step(model)
  x, y = np.ones((1, 1), "float32"), np.zeros((1,), "int64")
  assert float(step(x, y)) == pytest.approx(math.log(2))
  np.testing.assert_allclose(model.layers[0].bias.numpy(), [0.005, -0.005],
                             rtol=1e-5)
  step(x, y)
  p = 1 / (1 + math.exp(-0.02))
  move = 0.9 * 0.005 + 0.01 * (1 - p)
  np.testing.assert_allclose(model.layers[0].bias.numpy(),
                             [0.005 + move, -0.005 - move], rtol=1e-5)
  np.testing.assert_allclose(model.layers[0].kernel.numpy(),
                             [[0.005 + move, -0.005 - move]], rtol=1e-5)


def test_results_json_names_the_machine_and_ends_with_a_newline(
    tmp_path, capsys):
  path = tmp_path / "results" / "x.json"
  bench_util.write_results(str(path), {"results": [1, 2]})
  text = path.read_text()
  assert text.endswith("}\n")
  data = json.loads(text)
  assert list(data) == ["machine", "results"] and data["results"] == [1, 2]
  machine = data["machine"]
  assert machine["cpus"] == os.cpu_count()
  assert 1 <= machine["cpus_usable"] <= os.cpu_count()
  assert "cores" in machine["cpu"] and "AVX-512" in machine["cpu"]
  assert machine["python"].count(".") == 2 and machine["gpus"] >= 0
  assert f"Wrote {path}" in capsys.readouterr().out
  bench_util.write_results("", {"results": []})  # no path: nothing written
  assert capsys.readouterr().out == ""



class _Result:
  """What a step returns, as far as rate_runner reads it."""

  def numpy(self):
    return 1.0


def test_rate_runner_times_the_calls_after_an_untimed_one(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(bench_util.time, "perf_counter", lambda: clock[0])

  def call():  # each call takes half a second of the fake clock
    clock[0] += 0.5
    return _Result()

  run = bench_util.rate_runner(call, batch=8)
  assert run(4) == pytest.approx(4 * 8 / 2.0)  # the warm-up call not timed
  assert clock[0] == pytest.approx(2.5)
