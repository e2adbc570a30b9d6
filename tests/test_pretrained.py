"""Published weights by tag: table, download, cache, hash, offline, recipe.

A loopback HTTP server (127.0.0.1, started here) serves a reference-layout
checkpoint archive the test writes from a tiny model, and a keras.applications
EfficientNetV2B0 with random weights in the distributed `.h5` layout (its md5
put into the table in place of the published one); the mirror variable
points every URL at it, and KERAS_HOME at a temporary cache.
"""

import dataclasses
import functools
import http.server
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time

import effnetv2_tf
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import SAMPLES
from conftest import tiny_model
from effnetv2_tf import config as config_lib
from effnetv2_tf.data import preprocessing
from effnetv2_tf.data import tfrecord_format
from effnetv2_tf.models import pretrained
from effnetv2_tf.runs import checkpoints
from test_weights import _ours
from test_weights import _write_checkpoint


TINY = {"width_coefficient": 0.25, "depth_coefficient": 0.34}


def test_table_covers_what_the_reference_publishes():
  # efficientnetv2/effnetv2_model.py get_model: 8 V2 models x 3 tags, less
  # XL's imagenet; V1 B0-B7 imagenet and jft (B8/L2 are not registered).
  names = {e.name for e in pretrained.TABLE}
  assert len(names) == len(pretrained.TABLE) == 23 + 16
  assert "efficientnetv2-xl:imagenet" not in names
  assert "efficientnetv2-xl:imagenet21k-ft1k" in names
  by_name = {e.name: e for e in pretrained.TABLE}
  # keras/src/applications/efficientnet_v2.py WEIGHTS_HASHES["-s"][0].
  assert by_name["efficientnetv2-s:imagenet"].md5 == (
      "e1d88a8495beba45748fedd0cecbe016")
  assert by_name["efficientnetv2-s:imagenet21k"].url == (
      "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/"
      "v2/efficientnetv2-s-21k.tgz")
  assert by_name["efficientnetv2-s:imagenet21k"].num_classes == 21843


def test_v1_imagenet_is_keras_applications_file_b3_included():
  # keras/src/applications/efficientnet.py: BASE_WEIGHTS_PATH + name + ".h5",
  # WEIGHTS_HASHES["b3"][0]; its B3 rounds channels as ours (10% rule).
  entry = pretrained.get("efficientnet-b3", "imagenet")
  assert (entry.url, entry.md5, entry.source) == (
      "https://storage.googleapis.com/keras-applications/efficientnetb3.h5",
      "ffd1fdc53d0ce67064dc6a9c7960ede0", "keras.applications")
  assert entry.alternative == ("https://storage.googleapis.com/"
                               "cloud-tpu-checkpoints/efficientnet/advprop/"
                               "efficientnet-b3.tar.gz")
  assert {pretrained.get(f"efficientnet-b{i}", "imagenet").source
          for i in range(8)} == {"keras.applications"}


def test_unpublished_tag_lists_the_models_tags():
  with pytest.raises(pretrained.PretrainedError) as err:
    pretrained.get("efficientnetv2-xl", "imagenet")
  assert "imagenet21k, imagenet21k-ft1k" in str(err.value)
  assert "\n" not in str(err.value)
  with pytest.raises(pretrained.PretrainedError, match="not for"):
    pretrained.get("efficientnetv2-s", "efficientnetv2-b0:imagenet")


@pytest.mark.parametrize("entry", pretrained.TABLE, ids=lambda e: e.name)
def test_recipe_preprocessing_is_what_build_config_resolves(entry):
  config = config_lib.build_config(entry.model, entry.dataset_cfg)
  prep, size = pretrained.preprocessing_of(entry)
  assert prep == preprocessing.from_config(config.data)
  assert size == config.model.eval_size


def test_recipe_scalings_by_hand():
  s = pretrained.preprocessing_of(pretrained.get("efficientnetv2-s",
                                              "imagenet21k-ft1k"))[0]
  assert preprocessing.scaling(s.input_scaling) == ((2 / 255,) * 3, (-1.0,) * 3)
  assert not s.eval_crop  # preprocess_for_finetune: the whole image
  s = pretrained.preprocessing_of(pretrained.get("efficientnetv2-s",
                                              "imagenet21k"))
  assert s[1] == 224 and s[0].input_scaling == preprocessing.SCALE_MINUS_ONE_ONE


def test_imagenet_class_names_ship_in_label_order():
  names = pretrained.class_names(pretrained.get("efficientnetv2-s",
                                                "imagenet"))
  assert len(names) == 1000
  assert names[0] == "tench" and names[1] == "goldfish"
  assert names[999] == "toilet tissue"
  assert pretrained.class_names(pretrained.get("efficientnetv2-s",
                                               "imagenet21k")) is None


ROOT = pathlib.Path(__file__).resolve().parents[1]
# Reference effnetv2_configs.py: efficientnetv2-b0 evaluates at 224 px; the
# finetune recipe (preprocessing.py 'ft') resizes the whole image
# (bilinear) and scales it to (x / 255 - 0.5) / 0.5.
B0_EVAL_SIZE = 224


def _finetune_eval_input(path):
  image = tf.cast(tf.io.decode_jpeg(path.read_bytes(), channels=3),
                  tf.float32)
  resized = tf.image.resize(image, (B0_EVAL_SIZE, B0_EVAL_SIZE))
  return (resized / 255 - 0.5) / 0.5


def _calibrated(model):
  """`model` with every batch norm's moving statistics set to its input's
  statistics on sample photographs, layer by layer: a random network whose
  outputs depend on its input (at initial statistics they hardly do), so a
  wrong crop, size or scaling changes its predictions."""
  images = tf.stack([
      tf.image.resize(tf.cast(tf.io.decode_jpeg(f.read_bytes(), channels=3),
                              tf.float32), (64, 64)) * (2 / 255) - 1
      for f in sorted(SAMPLES.iterdir())[:16]])
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      inputs = keras.Model(model.inputs, layer.input)(images, training=False)
      mean, variance = tf.nn.moments(inputs, axes=[0, 1, 2])
      layer.moving_mean.assign(mean)
      layer.moving_variance.assign(variance)
  return model


def _subprocess(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, env=env, timeout=600, check=False,
                        cwd=ROOT)


class _Handler(http.server.SimpleHTTPRequestHandler):
  requests = []
  stall = None  # a threading.Event: send half of each file, then wait

  def log_message(self, *args):
    pass

  def do_GET(self):  # noqa: N802
    type(self).requests.append(self.path)
    super().do_GET()

  def copyfile(self, source, outputfile):
    if self.stall is None:
      return super().copyfile(source, outputfile)
    data = source.read()
    outputfile.write(data[:len(data) // 2])
    outputfile.flush()
    self.stall.wait(120)


@pytest.fixture
def server(tmp_path, monkeypatch):
  """(served folder, request log); mirror and cache set to them."""
  served = tmp_path / "served"
  served.mkdir()
  handler = type("Handler", (_Handler,), {"requests": []})
  httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  monkeypatch.setenv(pretrained.MIRROR_ENV,
                     f"http://127.0.0.1:{httpd.server_address[1]}")
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  (tmp_path / "keras").mkdir()
  yield served, handler
  if handler.stall is not None:
    handler.stall.set()
  httpd.shutdown()


def _archive(served, tmp_path, num_classes=1000, source=None):
  """efficientnetv2-b0-21k-ft1k.tgz of `source` (a tiny model); its
  expected values."""
  source = source or tiny_model(num_classes=num_classes)
  folder = tmp_path / "src" / "efficientnetv2-b0-21k-ft1k"
  folder.mkdir(parents=True)
  expected = _write_checkpoint(source, str(folder / "model.ckpt"))
  with tarfile.open(served / "efficientnetv2-b0-21k-ft1k.tgz", "w:gz") as t:
    t.add(folder, arcname=folder.name)
  return expected


def test_download_unpack_once_then_cache_hit(server, tmp_path):
  served, handler = server
  requests = handler.requests
  expected = _archive(served, tmp_path)
  model = tiny_model(num_classes=1000, weights="imagenet21k-ft1k",
                     include_preprocessing=True)
  np.testing.assert_array_equal(model.weights[0].numpy(), expected[0])
  assert len(requests) == 1
  # The weights' recipe (finetune) sets the in-model scaling: 2/255, -1.
  rescaling = model.get_layer("rescaling")
  assert np.isclose(rescaling.scale, 2 / 255) and rescaling.offset == -1.0
  cached = tmp_path / "keras" / "models" / "efficientnetv2-b0-21k-ft1k"
  assert cached.is_dir()
  os.remove(served / "efficientnetv2-b0-21k-ft1k.tgz")
  again = tiny_model(num_classes=1000, weights="imagenet21k-ft1k")
  np.testing.assert_array_equal(again.weights[0].numpy(), expected[0])
  assert len(requests) == 1  # no second request
  assert not [p for p in os.listdir(cached.parent) if ".part" in p]


def test_hash_mismatch_is_refused_and_removed(server, tmp_path):
  served, _ = server
  (served / "efficientnetv2-b0.h5").write_bytes(b"not the published file")
  entry = pretrained.get("efficientnetv2-b0", "imagenet")
  with pytest.raises(pretrained.PretrainedError) as err:
    pretrained.fetch(entry)
  message = str(err.value)
  assert "md5" in message and entry.md5 in message and "\n" not in message
  assert os.listdir(tmp_path / "keras" / "models") == []


def test_offline_is_one_line_naming_url_and_cache(tmp_path, monkeypatch):
  monkeypatch.setenv(pretrained.MIRROR_ENV, "http://127.0.0.1:9")
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  entry = pretrained.get("efficientnetv2-s", "imagenet21k")
  with pytest.raises(pretrained.PretrainedError) as err:
    pretrained.fetch(entry)
  message = str(err.value)
  assert "http://127.0.0.1:9/efficientnetv2-s-21k.tgz" in message
  assert str(tmp_path / "models" / "efficientnetv2-s-21k") in message
  assert entry.url in message and "\n" not in message


def test_a_partial_download_is_never_used(server, tmp_path):
  served, handler = server
  requests = handler.requests
  expected = _archive(served, tmp_path)
  models = tmp_path / "keras" / "models"
  models.mkdir()
  # What a killed download leaves: a .part file of another process, and a
  # half-unpacked folder.
  (models / "efficientnetv2-b0-21k-ft1k.tgz.part-1").write_bytes(b"\x1f\x8b")
  (models / "efficientnetv2-b0-21k-ft1k.unpacking-1").mkdir()
  model = tiny_model(num_classes=1000, weights="imagenet21k-ft1k")
  np.testing.assert_array_equal(model.weights[0].numpy(), expected[0])
  assert len(requests) == 1


def test_existing_path_named_like_a_tag_is_the_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.mkdir("imagenet")
  path, entry = pretrained.resolve("efficientnetv2-b0", "imagenet")
  assert (path, entry) == ("imagenet", None)


def test_finetune_from_a_tag_replaces_the_head(server, tmp_path):
  served, _ = server
  expected = _archive(served, tmp_path)
  model = tiny_model(num_classes=10)
  head_before = model.get_layer("predictions").kernel.numpy()
  checkpoints.init_from(model, "efficientnetv2-b0:imagenet21k-ft1k")
  np.testing.assert_array_equal(model.weights[0].numpy(), expected[0])
  np.testing.assert_array_equal(
      model.get_layer("predictions").kernel.numpy(), head_before)
  note = checkpoints.scaling_note(
      config_lib.build_config("efficientnetv2-b0", "smoke"),
      "imagenet21k-ft1k")
  assert note and "(x / 255 - 0.5) / 0.5" in note


def test_keras_applications_file_by_tag_gives_keras_outputs(
    server, v2_files, monkeypatch):
  served, handler = server
  requests = handler.requests
  _, x, expected, paths = v2_files
  shutil.copy(paths["legacy"], served / "efficientnetv2-b0.h5")
  table = tuple(
      dataclasses.replace(e, md5=pretrained.md5_of(paths["legacy"]))
      if e.name == "efficientnetv2-b0:imagenet" else e
      for e in pretrained.TABLE)
  monkeypatch.setattr(pretrained, "TABLE", table)
  # include_preprocessing with the recipe's scaling (B0's legacy row:
  # ImageNet mean/std), as keras.applications' own preprocessing layers.
  y = _ours("efficientnetv2-b0", "imagenet")(x, training=False).numpy()
  np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)
  _ours("efficientnetv2-b0", "imagenet")
  assert requests == ["/efficientnetv2-b0.h5"]  # the second call: cached


def test_a_killed_download_is_never_used_then_removed(server, tmp_path,
                                                      monkeypatch):
  served, handler = server
  expected = _archive(served, tmp_path)
  handler.stall = threading.Event()
  models = tmp_path / "keras" / "models"
  fetching = subprocess.Popen(
      [sys.executable, "-c", "from effnetv2_tf.models import pretrained; "
       "pretrained.fetch(pretrained.get('efficientnetv2-b0', "
       "'imagenet21k-ft1k'))"],
      env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2"),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  part = models / f"efficientnetv2-b0-21k-ft1k.tgz.part-{fetching.pid}"
  deadline = time.time() + 120
  while not (part.is_file() and part.stat().st_size) and (
      time.time() < deadline and fetching.poll() is None):
    time.sleep(0.2)
  assert part.is_file() and part.stat().st_size, "no download started"
  fetching.send_signal(signal.SIGKILL)  # mid-download
  fetching.wait(60)
  handler.stall.set()
  handler.stall = None
  assert sorted(os.listdir(models)) == [part.name]  # nothing else cached
  # The next fetch downloads again; the dead process's part, untouched for
  # STALE_AFTER_S (here 0), is removed.
  monkeypatch.setattr(pretrained, "STALE_AFTER_S", 0)
  model = tiny_model(num_classes=1000, weights="imagenet21k-ft1k")
  np.testing.assert_array_equal(model.weights[0].numpy(), expected[0])
  assert len(handler.requests) == 2
  assert sorted(os.listdir(models)) == ["efficientnetv2-b0-21k-ft1k"]


@pytest.mark.slow
def test_eval_of_a_tag_uses_the_weights_recipe(server, tmp_path):
  # Labels are the predictions of the loaded weights on the finetune
  # recipe's input, computed here by hand: main.py's eval finds them all
  # only if it serves that input (a center crop, 240 px or mean/std
  # scaling change about half of them, measured).
  served, _ = server
  _archive(served, tmp_path, source=_calibrated(tiny_model(num_classes=1000)))
  model = tiny_model(num_classes=1000, weights="imagenet21k-ft1k")
  data = tmp_path / "data"
  data.mkdir()
  with tf.io.TFRecordWriter(str(data / "validation-00000-of-00001")) as out:
    for path in sorted(SAMPLES.iterdir())[:16]:
      label = int(np.argmax(model(_finetune_eval_input(path)[None],
                                  training=False)[0]))
      out.write(tfrecord_format.make_example(
          path.read_bytes(), label + tfrecord_format.LABEL_OFFSET)
                .SerializeToString())
  result = _subprocess(
      "main.py", "--mode=eval", f"--data_dir={data}",
      "--init_checkpoint=efficientnetv2-b0:imagenet21k-ft1k",
      f"--model_dir={tmp_path / 'eval'}",
      "--hparam_str=model.width_coefficient=0.25,"
      "model.depth_coefficient=0.34,eval.batch_size=8")
  assert result.returncode == 0, result.stderr[-3000:]
  # Validation files alone serve eval (no train-* needed).
  assert "Data: imagenet, 1000 classes, validation 16" in result.stdout
  assert ("Config: recipe imagenetft of efficientnetv2-b0:imagenet21k-ft1k"
          in result.stdout)
  assert "top-1 1.0000" in result.stdout


@pytest.mark.slow
def test_main_finetunes_a_folder_from_a_tag(server, tmp_path):
  served, _ = server
  _archive(served, tmp_path)
  for name in ("cat", "dog", "owl"):  # 9 train + 1 held-out image each
    (tmp_path / "images" / name).mkdir(parents=True)
    for i in range(10):
      pixels = np.full((8, 8, 3), 25 * i, np.uint8)
      (tmp_path / "images" / name / f"{i}.png").write_bytes(
          tf.io.encode_png(pixels).numpy())
  result = _subprocess(
      "main.py", "--dataset_cfg=folder", f"--data_dir={tmp_path / 'images'}",
      "--init_checkpoint=efficientnetv2-b0:imagenet21k-ft1k",
      f"--model_dir={tmp_path / 'run'}",
      "--hparam_str=model.width_coefficient=0.25,"
      "model.depth_coefficient=0.34,model.eval_size=16,train.steps=2,progressive.num_stages=1,"
      "train.batch_size=9,eval.batch_size=3,runtime.steps_per_loop=1")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  # All but the 1000-class head's kernel and bias, which stay as
  # initialised for the 3 classes.
  loaded = re.search(r"init_checkpoint: loaded (\d+)/(\d+) weights from "
                     r"efficientnetv2-b0:imagenet21k-ft1k \(skipped "
                     r"predictions\)", out)
  assert loaded and int(loaded[1]) == int(loaded[2]) - 2, out
  assert "model.num_classes: 3, the data's class count" in out
  # The folder config's B0 recipe scales by ImageNet mean/std, the weights'
  # finetune recipe by (x / 255 - 0.5) / 0.5: said before training.
  note = out.index("Input scaling: this run's (x / 255 - mean) / std")
  assert note < out.index("stage 1/1")
  assert "eval at step 2 (16 px, 3 images" in out


@pytest.mark.slow
def test_infer_prints_the_top5_imagenet_names(server, tmp_path):
  # infer.py builds the real B0 of the tag; its finetune recipe's input and
  # the shipped names are computed here by hand.
  served, _ = server
  _archive(served, tmp_path, source=_calibrated(
      effnetv2_tf.create_model("efficientnetv2-b0")))
  photo = SAMPLES / "n01440764_tench.JPEG"
  model = effnetv2_tf.create_model("efficientnetv2-b0",
                                   weights="imagenet21k-ft1k")
  probabilities = tf.nn.softmax(model(_finetune_eval_input(photo)[None],
                                      training=False))[0].numpy()
  top5 = probabilities.argsort()[::-1][:5]
  with open(ROOT / "effnetv2_tf" / "data" / "imagenet_labels.txt") as f:
    names = [line.rstrip("\n").split("\t")[1] for line in f]
  result = _subprocess("infer.py", "--model=efficientnetv2-b0",
                       "--weights=imagenet21k-ft1k", f"--image={photo}")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert lines[-6] == f"{photo}:"
  for rank, (line, i) in enumerate(zip(lines[-5:], top5), 1):
    name, p = line.split(": ")[0], float(line.rsplit(": ", 1)[1])
    assert name == f"  {rank}. {names[i]} (class {i})", (line, i)
    assert p == pytest.approx(probabilities[i], abs=1e-4)
