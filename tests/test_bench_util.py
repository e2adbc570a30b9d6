"""benchmarks/bench_util.py: the kernel groups of profile_step.py's side by
side profile, and the missing-PyTorch message of peers.py."""

import importlib.util
import pathlib
import subprocess
import sys

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
