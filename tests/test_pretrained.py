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
import shutil
import tarfile
import threading

import numpy as np
import pytest

from conftest import tiny_model
from effnetv2_tf.data import recipes
from effnetv2_tf.models import pretrained
from effnetv2_tf.training import checkpoints
from effnetv2_tf.training import config as config_lib
import test_weights
from test_weights import _ours
from test_weights import _write_checkpoint

v2_files = test_weights.v2_files  # the fixture, shared

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


def test_unpublished_tag_lists_the_models_tags():
  with pytest.raises(pretrained.PretrainedError) as err:
    pretrained.get("efficientnetv2-xl", "imagenet")
  assert "imagenet21k, imagenet21k-ft1k" in str(err.value)
  assert "\n" not in str(err.value)
  with pytest.raises(pretrained.PretrainedError, match="not for"):
    pretrained.get("efficientnetv2-s", "efficientnetv2-b0:imagenet")


@pytest.mark.parametrize("entry", pretrained.TABLE, ids=lambda e: e.name)
def test_recipe_preprocessing_is_what_build_config_resolves(entry):
  config = config_lib.build_config(entry.model, entry.recipe)
  prep, size = pretrained.preprocessing(entry)
  assert prep == recipes.from_config(config.data)
  assert size == config.model.eval_size


def test_recipe_scalings_by_hand():
  s = pretrained.preprocessing(pretrained.get("efficientnetv2-s",
                                              "imagenet21k-ft1k"))[0]
  assert recipes.scaling(s.input_scaling) == ((2 / 255,) * 3, (-1.0,) * 3)
  assert not s.eval_crop  # preprocess_for_finetune: the whole image
  s = pretrained.preprocessing(pretrained.get("efficientnetv2-s",
                                              "imagenet21k"))
  assert s[1] == 224 and s[0].input_scaling == recipes.SCALE_MINUS_ONE_ONE


def test_imagenet_class_names_ship_in_label_order():
  names = pretrained.class_names(pretrained.get("efficientnetv2-s",
                                                "imagenet"))
  assert len(names) == 1000
  assert names[0] == "tench" and names[1] == "goldfish"
  assert names[999] == "toilet tissue"
  assert pretrained.class_names(pretrained.get("efficientnetv2-s",
                                               "imagenet21k")) is None


class _Handler(http.server.SimpleHTTPRequestHandler):
  requests = []

  def log_message(self, *args):
    pass

  def do_GET(self):  # noqa: N802
    type(self).requests.append(self.path)
    super().do_GET()


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
  yield served, handler.requests
  httpd.shutdown()


def _archive(served, tmp_path, num_classes=1000):
  """efficientnetv2-b0-21k-ft1k.tgz of a tiny model; its expected values."""
  source = tiny_model(num_classes=num_classes)
  folder = tmp_path / "src" / "efficientnetv2-b0-21k-ft1k"
  folder.mkdir(parents=True)
  expected = _write_checkpoint(source, str(folder / "model.ckpt"))
  with tarfile.open(served / "efficientnetv2-b0-21k-ft1k.tgz", "w:gz") as t:
    t.add(folder, arcname=folder.name)
  return expected


def test_download_unpack_once_then_cache_hit(server, tmp_path):
  served, requests = server
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
  served, requests = server
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
  served, requests = server
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
