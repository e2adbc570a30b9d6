"""XLA: the drivers' own train and eval steps and the serving function compile
with jit_compile=True and compute what the plain (TensorFlow-executor) steps
compute. What a TPU compiles is this same per-replica step.

The steps run a tiny B0 (6 blocks) on digits batches at 16 px with mixup and
CutMix (soft targets), weight decay, fused BN, 1x1-as-matmul, the fused
optimizer and the EMA update. Dropout and stochastic depth are off where
two steps are compared (their masks would differ); the fit test runs them
on and only has to compile.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf import export
from effnetv2_tf.data import pipeline
from effnetv2_tf.runs import run_dir
from effnetv2_tf.training import custom_loop
from effnetv2_tf.training import fit_loop
from effnetv2_tf.training import xla

from conftest import observe_dropout

# On the smoke config (configs/datasets.py), shallower and in one stage.
TINY = ("model.depth_coefficient=0.1,progressive.num_stages=1,"
        "progressive.max_image_size=16,model.eval_size=16,"
        "train.warmup_epochs=0,train.steps=2,runtime.jit_compile=true,"
        "runtime.steps_per_loop=2")


def _xla_cpu_error():
  """None where XLA compiles for the CPU, else TensorFlow's reason why not."""
  try:
    tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(1.0))
  except tf.errors.NotFoundError as err:
    return err.message.split(" [Op:")[0]
  return None


NO_XLA_CPU = _xla_cpu_error()
# tensorflow-tpu 2.20 (CI's second build) has no XLA CPU backend.
needs_xla_cpu = pytest.mark.skipif(
    NO_XLA_CPU is not None,
    reason=f"this TensorFlow build has no XLA CPU backend ({NO_XLA_CPU})")
# Nothing random inside the step; soft targets from both mixing methods;
# weight decay large enough to show in the update; momentum for its slot.
COMPARED = ("model.survival_prob=1.0,progressive.min_dropout=0,"
            "progressive.max_dropout=0,progressive.min_mixup=0.5,"
            "progressive.max_mixup=0.5,progressive.min_cutmix=1.0,"
            "progressive.max_cutmix=1.0,"
            "train.weight_decay=0.01,train.momentum=0.9")


def _trainer(model_dir, hparams, cls=custom_loop.CustomLoopTrainer):
  config = config_lib.build_config("efficientnetv2-b0", "smoke",
                                   ",".join([TINY, hparams]))
  return cls(config, str(model_dir), tf.distribute.get_strategy())


def _state(trainer):
  """Every variable one step writes: weights, BN statistics, EMA shadows,
  then the optimizer's (slots, step counter; loss scale under float16)."""
  return (trainer.model.variables + trainer.ema.shadows +
          trainer.optimizer.variables)


def _shared(trainer):
  """How many of `_state` every policy has alike (all but the optimizer's)."""
  return len(trainer.model.variables) + len(trainer.ema.shadows)


def _run_step(trainer, step, batch, start):
  """Runs `step` from the state `start`; returns (loss, state deltas)."""
  for variable, value in zip(_state(trainer), start):
    variable.assign(value)
  loss, _ = step(batch)
  return float(loss), [v.numpy() - s for v, s in zip(_state(trainer), start)]


def _first_batch(trainer):
  return next(iter(trainer.train_dataset(trainer.stages[0])))


def _groups(trainer):
  """Positions in `_state` by what they hold; each group is compared on its
  own, since their updates differ in scale by up to 1e4 (a BN variance
  moves by ~0.3, a weight by ~1e-3 at this learning rate)."""
  model = trainer.model
  trainable = {id(v) for v in model.trainable_variables}
  groups = {"weights": [], "bn_statistics": []}
  for i, variable in enumerate(model.variables):
    if id(variable) in trainable:
      groups["weights"].append(i)
    elif variable.path.endswith(("moving_mean", "moving_variance")):
      groups["bn_statistics"].append(i)
  start = len(model.variables)
  groups["ema"] = list(range(start, _shared(trainer)))
  groups["optimizer"] = [
      i for i in range(_shared(trainer), len(_state(trainer)))
      if _state(trainer)[i].dtype in ("float32", "float16")]
  assert all(groups.values()), groups
  return groups


def _relative_distance(deltas, reference, positions):
  """|deltas - reference| / |reference| over the variables at `positions`
  at once: one norm over the group, so that gradients that are zero in exact
  arithmetic (a BN shift before another BN), where both steps give only
  ~1e-7 of rounding noise, weigh as little as they move."""
  diff = np.sqrt(sum(np.sum((deltas[i] - reference[i]) ** 2)
                     for i in positions))
  return diff / np.sqrt(sum(np.sum(reference[i] ** 2) for i in positions))


def _compare(trainer):
  """(plain loss, XLA loss, plain deltas, XLA deltas, batch, HLO text)."""
  batch = _first_batch(trainer)
  start = [v.numpy() for v in _state(trainer)]
  plain = _run_step(trainer, tf.function(trainer.make_step_fn()), batch,
                    start)
  compiled = trainer.make_compiled_step()
  fast = _run_step(trainer, compiled, batch, start)
  hlo = compiled.experimental_get_compiler_ir(batch)(stage="hlo")
  return plain, fast, batch, hlo


@pytest.fixture(scope="module")
def float32_steps(tmp_path_factory):
  trainer = _trainer(tmp_path_factory.mktemp("xla32"), COMPARED)
  return trainer, _compare(trainer)


@needs_xla_cpu
def test_train_step_is_the_xla_compiled_one(float32_steps):
  trainer, (_, _, batch, hlo) = float32_steps
  assert trainer.jit_compile
  assert hlo.startswith("HloModule")
  # The fused BN kernel and the fused optimizer are inside the program.
  assert "batch-norm-training" in hlo
  # Mixup/CutMix soft targets reached the step.
  assert float(tf.reduce_max(batch["labels"])) < 1.0


@needs_xla_cpu
def test_xla_step_matches_the_plain_step_in_float32(float32_steps):
  trainer, ((plain_loss, plain), (xla_loss, fast), _, _) = float32_steps
  # XLA fuses and reorders float32 sums (convolution gradients, BN
  # moments): ~1e-7 on the loss, ~1e-4 of the update norm measured;
  # RMSProp scales each gradient by 1/sqrt(ms + eps), so an update differs
  # as much as its gradient does. 1e-3 leaves a 10x margin; a step that
  # skipped weight decay, the EMA or the BN statistics would miss by more.
  assert xla_loss == pytest.approx(plain_loss, rel=1e-5)
  groups = _groups(trainer)
  assert set(groups) == {"weights", "bn_statistics", "ema", "optimizer"}
  for name, positions in groups.items():
    assert _relative_distance(fast, plain, positions) < 1e-3, name
  # Integer state (step counter, RNG seeds) moves identically.
  for a, b in zip(fast, plain):
    if a.dtype.kind != "f":
      np.testing.assert_array_equal(a, b)
  assert int(trainer.optimizer.iterations) == 1  # from 0, after the XLA step


@pytest.fixture(scope="module")
def sgd_float32_step(tmp_path_factory):
  """The float32 plain step with SGD and momentum: (hparams, batch, start,
  loss, deltas).

  SGD because its update is linear in the gradient. RMSProp's first step is
  about lr * sign(g) * sqrt(10), which turns the mixed policies' rounding of
  near-zero gradients into full-size sign flips in plain and XLA steps alike.
  """
  hparams = COMPARED + ",train.optimizer=momentum"
  reference = _trainer(tmp_path_factory.mktemp("sgd32"), hparams)
  batch = _first_batch(reference)
  start = [v.numpy() for v in _state(reference)]
  loss, deltas = _run_step(reference, tf.function(reference.make_step_fn()),
                           batch, start)
  return hparams, batch, start, loss, deltas


@needs_xla_cpu
@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_xla_step_is_as_close_to_float32_as_the_plain_one(
    sgd_float32_step, tmp_path, policy):
  # mixed_float16 wraps the optimizer in Keras' LossScaleOptimizer (the GPU
  # path): the scaled loss, the finite check and the unscaled update are
  # inside the compiled step too.
  hparams, batch, start, ref_loss, ref = sgd_float32_step
  keras.mixed_precision.set_global_policy(policy)
  try:
    trainer = _trainer(tmp_path / "mixed", hparams)
    if policy == "mixed_float16":
      # Keras starts the loss scale at 2^15 and skips (and halves the
      # scale after) a step whose float16 gradients overflow, as this
      # model's first one does (measured): start both steps at 2^7.
      trainer.optimizer.dynamic_scale.assign(2.0 ** 7)
    n = _shared(trainer)
    start = start[:n] + [v.numpy() for v in _state(trainer)[n:]]
    plain_loss, plain = _run_step(
        trainer, tf.function(trainer.make_step_fn()), batch, start)
    compiled = trainer.make_compiled_step()
    xla_loss, fast = _run_step(trainer, compiled, batch, start)
    hlo = compiled.experimental_get_compiler_ir(batch)(stage="hlo")
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert ("bf16" if policy == "mixed_bfloat16" else "f16") in hlo
  # bfloat16 keeps 8 significant bits (2^-8 = 0.4% per rounding), float16
  # 11; the loss passes ~20 rounded layers: bfloat16 measured 1.1% apart,
  # 3% allowed.
  assert xla_loss == pytest.approx(plain_loss, rel=0.03)
  assert plain_loss == pytest.approx(ref_loss, rel=0.03)
  # Each mixed step is its own rounding of the float32 step; XLA must be
  # no further from it than twice the plain step. Measured (plain, XLA):
  # bfloat16 weights 10.2%, 7.7%, BN statistics 0.89%, 0.68%; float16
  # weights 0.91%, 1.10%, BN statistics 0.090%, 0.109%.
  for name, positions in _groups(trainer).items():
    if name == "optimizer":  # LossScaleOptimizer has other variables
      continue
    plain_error = _relative_distance(plain, ref, positions)
    assert 0 < plain_error < 0.2, name
    assert _relative_distance(fast, ref, positions) < 2 * plain_error, name


@needs_xla_cpu
@pytest.mark.slow
def test_fit_driver_trains_with_the_compiled_step(tmp_path):
  # Dropout and stochastic depth on: this run only has to compile and train.
  trainer = _trainer(tmp_path, "model.survival_prob=0.8,"
                     "progressive.max_dropout=0.3",
                     cls=fit_loop.FitTrainer)
  trainer.train()
  assert trainer.step == 2
  step = trainer.fit_model.step_fn
  assert step is trainer.step_function
  assert step.experimental_get_tracing_count() >= 1  # fit called it
  hlo = step.experimental_get_compiler_ir(_first_batch(trainer))(stage="hlo")
  assert hlo.startswith("HloModule")
  assert all(np.isfinite(h["loss"]) for h in trainer.summary["history"])


@needs_xla_cpu
def test_eval_step_compiles_and_counts_like_the_plain_one(float32_steps):
  trainer = float32_steps[0]
  batch = next(iter(pipeline.build_eval_dataset(
      trainer.source, 60, 16, run_dir.preprocessing_of(trainer.config),
      split=trainer.config.data.eval_split)))
  compiled = trainer.make_eval_step()
  plain = tf.function(compiled.python_function)
  assert compiled.experimental_get_compiler_ir(batch)(
      stage="hlo").startswith("HloModule")
  np.testing.assert_array_equal(compiled(batch).numpy(),
                                plain(batch).numpy())


@needs_xla_cpu
def test_serving_model_part_compiles_and_matches(float32_steps):
  trainer = float32_steps[0]
  prep = run_dir.preprocessing_of(trainer.config)
  images = tf.random.stateless_uniform([2, 40, 30, 3], [3, 4], 0, 255)
  fast = export.ServingModule(trainer.model, 16, prep, jit_compile=True)
  plain = export.ServingModule(trainer.model, 16, prep)
  hlo = fast.predict.experimental_get_compiler_ir(
      fast.preprocess(images))(stage="hlo")
  assert hlo.startswith("HloModule")
  np.testing.assert_allclose(fast.serve(images)["probabilities"],
                             plain.serve(images)["probabilities"],
                             rtol=1e-5, atol=1e-6)


@needs_xla_cpu
@pytest.mark.slow
def test_exported_serving_keeps_the_compiled_model_part(float32_steps,
                                                        tmp_path):
  trainer = float32_steps[0]
  prep = run_dir.preprocessing_of(trainer.config)
  export.export_saved_model(trainer.model, str(tmp_path), 16, prep,
                            jit_compile=True)
  signature = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
  library = signature.graph.as_graph_def().library.function
  assert any(f.attr["_XlaMustCompile"].b for f in library
             if "_XlaMustCompile" in f.attr)
  images = tf.random.stateless_uniform([2, 40, 30, 3], [5, 6], 0, 255)
  plain = export.ServingModule(trainer.model, 16, prep)
  np.testing.assert_allclose(signature(images=images)["probabilities"],
                             plain.serve(images)["probabilities"],
                             rtol=1e-5, atol=1e-6)


class _HostOpTrainer(custom_loop.CustomLoopTrainer):
  """A step with a host-side op (a Python function), which XLA refuses."""

  def make_step_fn(self, frozen=False):
    step_fn = super().make_step_fn(frozen)

    def with_host_op(batch):
      total, skipped = step_fn(batch)
      total += tf.reshape(
          tf.numpy_function(lambda: np.float32(0), [], tf.float32), [])
      return total, skipped

    return with_host_op


@needs_xla_cpu
def test_an_op_xla_cannot_compile_is_one_error_naming_it(tmp_path):
  trainer = _trainer(tmp_path, "", cls=_HostOpTrainer)
  with pytest.raises(xla.XlaError,
                     match=r"train step cannot be XLA-compiled: op PyFunc .*"
                     r"runtime.jit_compile=false"):
    trainer.train()


@pytest.mark.skipif(NO_XLA_CPU is None, reason="XLA compiles for the CPU "
                    "here: only a build without its CPU backend fails so")
def test_a_build_without_xla_for_the_cpu_is_one_error_line(tmp_path):
  trainer = _trainer(tmp_path, "")
  with pytest.raises(xla.XlaError, match="this TensorFlow build has no XLA "
                     "backend for the CPU"):
    trainer.train()


def test_default_is_off_on_cpu_and_explicit_wins():
  default = tf.distribute.get_strategy()
  assert xla.resolve(None, default)[0] is False
  assert xla.resolve(True, default) == (True, "XLA on (runtime.jit_compile="
                                        "true)")


def test_xla_retraces_per_stage_and_only_xla_insists():
  assert xla.resolve_retrace(None, jit_compile=False)[0] is False
  assert xla.resolve_retrace(None, jit_compile=True)[0] is True
  assert xla.resolve_retrace(True, jit_compile=False) == (
      True, "retraced per stage (runtime.retrace_per_stage=true)")
  with pytest.raises(xla.XlaError, match="needs each stage's static"):
    xla.resolve_retrace(False, jit_compile=True)


@needs_xla_cpu
@pytest.mark.slow
def test_xla_stages_trace_their_own_static_step(tmp_path, monkeypatch):
  trainer = _trainer(tmp_path, "progressive.num_stages=2,train.steps=4,"
                     "progressive.min_image_size=8,progressive.min_dropout=0.1,"
                     "progressive.max_dropout=0.6")
  assert trainer.retrace_per_stage
  spec = trainer.train_dataset(trainer.stages[0]).element_spec
  assert spec["images"].shape.as_list() == [16, 8, 8, 3]
  rates = observe_dropout(monkeypatch, trainer)
  trainer.train()
  assert trainer.traces == 2
  assert rates == pytest.approx([0.1, 0.6], abs=0.03)


def test_inputs_with_unknown_shapes_are_refused_for_xla():
  spec = {"images": tf.TensorSpec([None, 16, 16, 3]),
          "labels": tf.TensorSpec([8, 10])}
  with pytest.raises(xla.XlaError, match="'images' has shape"):
    xla.check_static_shapes(spec, "the training input")
  xla.check_static_shapes({"labels": tf.TensorSpec([8, 10])}, "x")
