"""EfficientNetV2 speed against its peers: keras.applications, ours, timm.

Times, in one run, for each row (task x variant):

- keras.applications' EfficientNetV2B0/S (random weights, logits);
- ours, `effnetv2_tf.create_model(name, num_classes=1000)` with its
  defaults (fused batch norm; 1x1 convolutions as matmuls in training);
  for inference also as export serves it: "ours, BN folded" (the model of
  `fold_bn.fold_batch_norms`, a `tf.function`) and "ours, SavedModel"
  (`export.export_saved_model`, reloaded, its `preprocessed` signature:
  softmax and top-5 added);
- timm's TF-ported `tf_efficientnetv2_b0` / `tf_efficientnetv2_s`
  (`timm.create_model(name, num_classes=1000)` with dropout and drop
  path 0.2, as ours and keras.applications train), in NCHW and in
  channels-last memory format, when some Python imports torch and timm.

Train: the same step on every side, SGD with momentum or, task
train_rmsprop, the paper's RMSProp (epsilon inside the square root: Keras'
RMSprop, timm's RMSpropTF), both with the library's values at lr 0.01
(`bench_util.build_optimizer`, `optimizer_values`), softmax cross-entropy,
float32 (TensorFlow: `bench_util.lean_train_step`, a `tf.function`;
PyTorch: eager, `torch.set_num_threads(os.cpu_count())`).
Inference: a `tf.function` of the model (training=False) / the model in
eval mode under `torch.inference_mode()`. Rows: train and inference of B0
at 224 px batch 32 (also its eval size) and of V2-S at 128 px batch 16,
inference of V2-S at its eval size, 384 px (batch 16). Each model is
built and warmed up (--warmup steps, excluded); then rounds time every
model of the row in turn, the PyTorch ones in a worker process
(`benchmarks/peers_torch.py`, JSON over a pipe) that idles while
TensorFlow runs, so drift in the machine's speed hits all alike; the
median round is reported with the ratio to ours.

  PYTHONPATH=. python benchmarks/peers.py [--models=b0,s,s-eval]
      [--tasks=train,train_rmsprop,inference] [--rounds=3] [--steps=4]
      [--warmup=2]
      [--torch_python=../peers-venv/bin/python]
      [--json_out=benchmarks/results/peers.json]

--torch_python defaults to this interpreter if it imports timm; without
one the timm rows are skipped (one line says how to install it).
Parameter counts include batch norm's moving statistics (Keras'
count_params; timm's running_mean/var buffers are added to its
parameters), so equal architectures show equal counts. Run it on idle
cores: PyTorch's OpenMP threads (one per core) ran 3-6x slower while
another process held one of the 2 cores, TensorFlow's far less; the
output and JSON give the load average at the start and end.
"""

import os
import tempfile

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

import bench_util  # pylint: disable=g-bad-import-order
import effnetv2_tf
from effnetv2_tf import export
from effnetv2_tf.data import preprocessing
from effnetv2_tf.models import fold_bn
from effnetv2_tf.models import registry

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["b0", "s", "s-eval"],
                  "Variants: b0 (224 px, batch 32), s (128 px, batch 16), "
                  "and for inference only s-eval (384 px, batch 16).")
flags.DEFINE_list("tasks", ["train", "train_rmsprop", "inference"],
                  "train (SGD), train_rmsprop (the paper's optimizer) and/or "
                  "inference.")
flags.DEFINE_integer("image_size", 0, "Image size for every variant (0: the "
                     "variant's).")
flags.DEFINE_integer("batch_size", 0, "Batch size for every variant (0: the "
                     "variant's).")
flags.DEFINE_integer("rounds", 3, "Rounds; each times every model in turn.")
flags.DEFINE_integer("steps", 4, "Timed steps per round and model.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per model before round 1.")
flags.DEFINE_string("torch_python", None, "A Python that imports torch and "
                    "timm (default: this one if it does; else no timm rows).")
flags.DEFINE_string("json_out", "benchmarks/results/peers.json",
                    "Where to write the results ('' to skip).")

# variant -> (ours, timm's, size, batch, tasks). B0's eval size is its 224
# px (the reference's effnetv2_configs.py, our registry); V2-S's is 384.
SETTINGS = {
    "b0": ("efficientnetv2-b0", "tf_efficientnetv2_b0", 224, 32,
           ("train", "train_rmsprop", "inference")),
    "s": ("efficientnetv2-s", "tf_efficientnetv2_s", 128, 16,
          ("train", "train_rmsprop", "inference")),
    "s-eval": ("efficientnetv2-s", "tf_efficientnetv2_s", 384, 16,
               ("inference",)),
}
# Inference rows of ours as served: export's model (batch norms folded)
# as a tf.function, and the reloaded SavedModel's `preprocessed` signature.
FOLDED, SAVED = "ours, BN folded", "ours, SavedModel"
flags.register_validator(
    "models", lambda names: set(names) <= set(SETTINGS),
    f"--models takes some of {', '.join(SETTINGS)}")
flags.register_validator(
    "tasks", lambda names: set(names) <= {"train", "train_rmsprop",
                                          "inference"},
    "--tasks takes some of train, train_rmsprop, inference")


def _tf_runner(task, model, images, labels, forward=None):
  """Returns run(steps) -> images/s of a train step or a forward pass
  (`forward`, default a tf.function of `model`, returns a tensor)."""
  x, y = tf.constant(images), tf.constant(labels)
  if task.startswith("train"):
    # The paper's RMSProp in Keras' class, as timm's RMSpropTF is
    # configured in peers_torch.py; else the lean step's SGD.
    optimizer = bench_util.build_optimizer(
        "rmsprop") if task == "train_rmsprop" else None
    train = bench_util.lean_train_step(model, optimizer)
    step = lambda: train(x, y)
  else:
    forward = forward or tf.function(lambda t: model(t, training=False))
    step = lambda: forward(x)
  return bench_util.rate_runner(step, len(images))


def _served(model, name, size, tmp):
  """[(row name, forward)]: ours folded as export serves it, and exported
  (with registry model `name`'s eval preprocessing) and reloaded."""
  folded = fold_bn.fold_batch_norms(model)
  path = os.path.join(tmp, f"saved_{size}")
  row = registry.get_model_spec(name).preprocessing
  export.export_saved_model(model, path, size,
                            preprocessing.get_row(row))
  loaded = tf.saved_model.load(path)
  predict = loaded.signatures["preprocessed"]
  # The signature reads the variables of `loaded`: keep it referenced.
  saved = lambda x, keep=loaded: predict(images=x)["probabilities"]
  return [(FOLDED, tf.function(lambda x: folded(x, training=False))),
          (SAVED, saved)]


def _tf_rows(variant, task, size, images, labels, tmp):
  """(row, run) of keras.applications' model and ours (for inference also
  as served), warmed up. Every row of ours counts the unfolded model's
  parameters: the same network."""
  ours = SETTINGS[variant][0]
  shape = (size, size, 3)
  framework = f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
  for name, build in (
      ("keras.applications",
       lambda: bench_util.applications_model(ours, shape)),
      ("ours", lambda: effnetv2_tf.create_model(ours, num_classes=1000,
                                                input_shape=shape))):
    model = build()
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    row = {"framework": framework, "model": name,
           "params": model.count_params(), "trainable": trainable}
    forwards = [(name, None)]
    if name == "ours" and task == "inference":
      forwards += _served(model, ours, size, tmp)
    for row_name, forward in forwards:
      run = _tf_runner(task, model, images, labels, forward)
      run(FLAGS.warmup)
      yield dict(row, model=row_name), run


def _row(worker, tmp, variant, task):
  """Times one task x variant; returns its result rows."""
  ours, timm_name, size, batch, _ = SETTINGS[variant]
  size, batch = FLAGS.image_size or size, FLAGS.batch_size or batch
  images, labels = bench_util.random_batch(size, batch)
  runners = list(_tf_rows(variant, task, size, images, labels, tmp))
  if worker:
    path = os.path.join(tmp, f"{variant}_{size}_{batch}.npz")
    np.savez(path, images=images, labels=labels)
    answer = worker.setup(task=task, model=timm_name, batch_file=path,
                          warmup=FLAGS.warmup)
    framework = f"PyTorch {answer['torch']}, timm {answer['timm']}"
    runners += [(dict(row, framework=framework), None)
                for row in answer["rows"]]
  rates = [[] for _ in runners]
  for round_index in range(FLAGS.rounds):
    round_rates = [run(FLAGS.steps) for _, run in runners if run]
    if worker:
      round_rates += worker.ask(cmd="round", steps=FLAGS.steps)["rates"]
    for rate, (row, _), value in zip(rates, runners, round_rates):
      rate.append(value)
      print(f"round {round_index + 1} {task} {variant} {row['model']}: "
            f"{value:.1f} images/s", flush=True)
  base = float(np.median(rates[1]))  # ours
  return [dict(row, task=task, variant=variant, timm_model=timm_name,
               ours_model=ours, size=size, batch=batch,
               images_per_sec=float(np.median(rate)),
               ratio_to_ours=float(np.median(rate)) / base, rounds=rate)
          for rate, (row, _) in zip(rates, runners)]


def main(argv):
  del argv
  load = [os.getloadavg()[0]]  # other work on the cores skews the rows
  python = bench_util.torch_python(FLAGS.torch_python)
  worker = bench_util.TorchWorker(python) if python else None
  rows = []
  try:
    with tempfile.TemporaryDirectory() as tmp:
      for task in FLAGS.tasks:
        for variant in FLAGS.models:
          if task in SETTINGS[variant][4]:
            rows += _row(worker, tmp, variant, task)
  finally:
    if worker:
      worker.close()
  load.append(os.getloadavg()[0])
  print(f"\n{bench_util.cpu_description()}; median of {FLAGS.rounds} "
        f"rounds of {FLAGS.steps} steps after {FLAGS.warmup} warm-up steps; "
        f"load average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} at "
        "the end")
  for task in FLAGS.tasks:
    for variant in FLAGS.models:
      block = [r for r in rows if r["task"] == task and
               r["variant"] == variant]
      if not block:
        continue
      first = block[0]
      print(f"\n{task} {variant} {first['size']} px batch {first['batch']}"
            "\n\n| framework | model | params | images/s | ratio to ours |"
            "\n|---|---|---:|---:|---:|")
      for r in block:
        print(f"| {r['framework']} | {r['model']} | {r['params']:,} | "
              f"{r['images_per_sec']:.1f} | {r['ratio_to_ours']:.2f} |")
      counts = {r["model"]: (r["params"], r["trainable"]) for r in block}
      if len(set(counts.values())) > 1:
        print(f"\nparameter counts differ (all, trainable): {counts}")
  bench_util.write_results(FLAGS.json_out, {
      "rounds": FLAGS.rounds, "steps": FLAGS.steps, "warmup": FLAGS.warmup,
      "torch_python": python, "torch_threads": os.cpu_count(),
      "load_average_start_end": load,
      "results": rows})


if __name__ == "__main__":
  app.run(main)
