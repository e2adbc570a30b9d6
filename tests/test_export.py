"""Export: SavedModel signatures, TFLite, feature vector, from a checkpoint; infer.py."""

import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import EXPORT_SIZE as SIZE
from conftest import tiny_model
from effnetv2_tf import config as config_lib
from effnetv2_tf import export
from effnetv2_tf.data import preprocess
from effnetv2_tf.data import preprocessing
from effnetv2_tf.models import ema as ema_lib
from effnetv2_tf.runs import run_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREP = preprocessing.ROWS["v2"]  # bilinear, (x - 128) / 128, crop below 320 px
SCALING = PREP.input_scaling


@pytest.fixture(name="exported")
def _exported(tiny_export):
  return tiny_export  # (model, path), shared with test_infer


def _softmax(model, images):
  return tf.nn.softmax(model(images, training=False)).numpy()


def test_preprocessed_signature_equals_keras(exported, tiny_export_loaded):
  model, _ = exported
  images = np.random.default_rng(0).normal(size=(3, SIZE, SIZE, 3)).astype(
      np.float32)
  served = tiny_export_loaded.signatures["preprocessed"]
  out = served(images=tf.constant(images))
  np.testing.assert_allclose(out["probabilities"].numpy(),
                             _softmax(model, images), atol=1e-5)
  top = out["top5_probabilities"].numpy()
  assert (np.diff(top, axis=1) <= 0).all()  # best first


def test_raw_image_signature_crops_and_resizes_an_odd_size(
    exported, tiny_export_loaded):
  model, path = exported
  image = np.random.default_rng(1).integers(0, 256, (1, 37, 53, 3))
  served = tiny_export_loaded
  out = served.signatures["serving_uint8"](
      images=tf.constant(image, tf.uint8))
  # By hand: crop keeps 24 / (24 + 32) of the short side, int(15.86) = 15,
  # at ((37 - 15) // 2, (53 - 15) // 2) = (11, 19).
  crop = image[:, 11:26, 19:34].astype(np.float32)
  expected = _softmax(model, preprocess.normalize(
      tf.image.resize(crop, [SIZE, SIZE]), SCALING))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected,
                             atol=1e-5)
  float_out = served.signatures["serving_default"](
      images=tf.constant(image, tf.float32))
  np.testing.assert_allclose(float_out["probabilities"].numpy(), expected,
                             atol=1e-5)
  with open(os.path.join(path, "labels.txt")) as f:
    assert f.readline().rstrip("\n") == "digit 0\tdigit 0"


def test_raw_image_signature_takes_a_one_pixel_image(exported,
                                                    tiny_export_loaded):
  model, _ = exported
  pixel = np.array([[[[10, 200, 30]]]], np.uint8)
  out = tiny_export_loaded.signatures["serving_uint8"](
      images=tf.constant(pixel))
  # By hand: 24 / 56 of 1 px rounds to an empty crop; the crop keeps the one
  # pixel, which the resize spreads over the whole 24 x 24 image.
  expected = _softmax(model, preprocess.normalize(
      np.broadcast_to(pixel, (1, SIZE, SIZE, 3)).astype(np.float32),
      SCALING))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected,
                             atol=1e-5)


def test_bytes_signature_takes_a_batch_of_sizes(exported, tiny_export_loaded):
  model, _ = exported
  image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), np.uint8)
  pixel = np.array([[[10, 200, 30]]], np.uint8)
  encoded = tf.stack([tf.io.encode_png(image), tf.io.encode_png(pixel)])
  out = tiny_export_loaded.signatures[export.BYTES_SIGNATURE](
      image_bytes=encoded)
  # By hand, as for the image signatures above (PNG is lossless): the
  # 15-pixel crop at (11, 19); the one pixel spread over 24 x 24.
  crop = image[np.newaxis, 11:26, 19:34].astype(np.float32)
  expected = np.concatenate([
      _softmax(model, preprocess.normalize(
          tf.image.resize(crop, [SIZE, SIZE]), SCALING)),
      _softmax(model, preprocess.normalize(np.broadcast_to(
          pixel, (1, SIZE, SIZE, 3)).astype(np.float32), SCALING))])
  np.testing.assert_allclose(out["probabilities"].numpy(), expected,
                             atol=1e-5)


@pytest.mark.slow
def test_tflite_matches_keras(exported):
  model, path = exported
  images = np.random.default_rng(2).normal(size=(1, SIZE, SIZE, 3)).astype(
      np.float32)
  expected = _softmax(model, images)
  for quantize in (False, True):
    tflite = export.convert_tflite(path, quantize=quantize)
    interpreter = tf.lite.Interpreter(model_path=tflite)
    # Named as the SavedModel signature's keys (README), not the
    # converter's StatefulPartitionedCall:0, :1, :2.
    assert [d["name"] for d in interpreter.get_input_details()] == ["images"]
    assert sorted(d["name"] for d in interpreter.get_output_details()) == [
        "probabilities", "top5_classes", "top5_probabilities"]
    runner = interpreter.get_signature_runner("preprocessed")
    got = runner(images=images)["probabilities"]
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-5)
    if not quantize:
      np.testing.assert_allclose(got, expected, atol=1e-4)
  assert os.path.getsize(os.path.join(path, export.TFLITE_QUANT_FILENAME)) < (
      os.path.getsize(os.path.join(path, export.TFLITE_FILENAME)))


@pytest.mark.slow
def test_feature_vector_module_and_tfsmlayer(exported, tmp_path):
  model, _ = exported
  path = export.export_feature_vector(model, str(tmp_path / "fv"), SIZE,
                                      PREP)
  images = np.random.default_rng(3).uniform(size=(2, 30, 20, 3)).astype(
      np.float32)  # [0, 1], any size
  backbone = keras.Model(model.inputs, model.get_layer("avg_pool").output)
  expected = backbone(preprocess.normalize(
      tf.image.resize(images * 255.0, [SIZE, SIZE]), SCALING)).numpy()
  loaded = tf.saved_model.load(path)
  np.testing.assert_allclose(loaded(tf.constant(images)).numpy(), expected,
                             atol=1e-5)
  # Transfer learning: the exported backbone as a Keras layer plus a new head.
  inputs = keras.Input([None, None, 3])
  features = keras.layers.TFSMLayer(path, call_endpoint="serve",
                                    trainable=False)(inputs)
  head = keras.Model(inputs, keras.layers.Dense(3)(features))
  assert head(images).shape == (2, 3)
  assert len(head.trainable_weights) == 2  # only the new head


@pytest.mark.slow
def test_export_from_a_checkpoint_uses_ema_weights(tmp_path):
  config = config_lib.build_config("efficientnetv2-b0", "smoke",
                                   "train.warmup_epochs=0")
  model = run_dir.model_from_config(config.model, 10, 0.1)
  ema = ema_lib.ExponentialMovingAverage(model, 0.9)
  for shadow in ema.shadows:  # EMA weights apart from the raw ones
    shadow.assign(shadow * 0.5 + 0.01)
  tf.train.Checkpoint(model=model, ema=ema).save(str(tmp_path / "ckpt"))
  config_lib.save_config(config, str(tmp_path))
  written = export.export_run(str(tmp_path), str(tmp_path / "export"),
                              tflite=False)
  assert written == [str(tmp_path / "export")]
  images = np.random.default_rng(4).normal(size=(2, SIZE, SIZE, 3)).astype(
      np.float32)
  got = tf.saved_model.load(written[0]).signatures["preprocessed"](
      images=tf.constant(images))["probabilities"].numpy()
  raw = _softmax(model, images)
  ema.copy_to_model()
  np.testing.assert_allclose(got, _softmax(model, images), atol=1e-5)
  assert not np.allclose(got, raw, atol=1e-3)


def _infer(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, str(ROOT / "infer.py"), *args],
                        capture_output=True, text=True, env=env, timeout=300,
                        check=False)


@pytest.mark.slow
def test_infer_prints_five_classes_of_a_photograph(exported, tmp_path):
  from sklearn.datasets import load_sample_image  # a real photograph
  photo = tmp_path / "china.jpg"
  tf.io.write_file(str(photo), tf.io.encode_jpeg(load_sample_image(
      "china.jpg")))
  _, path = exported
  result = _infer(f"--saved_model={path}", f"--image={photo}")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert lines[0] == f"{photo}:"
  ranks = [line.split(".")[0].strip() for line in lines[1:]]
  assert ranks == ["1", "2", "3", "4", "5"]
  assert all("digit " in line for line in lines[1:])  # names from labels.txt
  probs = [float(line.rsplit(":", 1)[1]) for line in lines[1:]]
  assert probs == sorted(probs, reverse=True)
  missing = _infer(f"--saved_model={path}", f"--image={tmp_path}/none.jpg")
  assert missing.returncode == 1
  assert "none.jpg does not exist" in missing.stderr
  assert "Traceback" not in missing.stderr
  (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  bad = _infer(f"--saved_model={path}", f"--image={tmp_path}/bad.jpg")
  assert bad.returncode == 1 and "Traceback" not in bad.stderr
  assert bad.stderr.endswith("bad.jpg is not a readable JPEG, PNG, GIF, "
                             "BMP or WebP image.\n")


@pytest.mark.slow
def test_infer_names_a_saved_model_without_the_bytes_signature(tmp_path):
  # An export written before serving_bytes existed.
  serving = export.ServingModule(tiny_model(), SIZE, PREP)
  old = [e for e in serving.endpoints() if e[0] != export.BYTES_SIGNATURE]
  path = export._write_archive(  # pylint: disable=protected-access
      serving.model, str(tmp_path / "old"), old)
  photo = tmp_path / "photo.png"
  tf.io.write_file(str(photo), tf.io.encode_png(tf.zeros([8, 8, 3],
                                                         tf.uint8)))
  result = _infer(f"--saved_model={path}", f"--image={photo}")
  assert result.returncode == 1
  assert result.stderr == (
      f"infer.py: error: --saved_model {path} has no serving_bytes "
      "signature (exported before it existed); export it again.\n")


def test_a_model_flag_other_than_the_runs_is_one_error_for_export_and_infer():
  # export.py and infer.py share this check of --model against config.json.
  run_config = {"model": {"name": "efficientnetv2-b0"}}
  run_dir.check_model_flag(None, run_config)
  run_dir.check_model_flag("efficientnetv2-b0", run_config)
  with pytest.raises(run_dir.RunDirError) as err:
    run_dir.check_model_flag("efficientnetv2-s", run_config, "the checkpoint")
  assert str(err.value) == (
      "--model efficientnetv2-s differs from the checkpoint's model "
      "efficientnetv2-b0 (config.json); drop --model.")
  with pytest.raises(run_dir.RunDirError, match="--model: .*efficientnetv2-zz"):
    run_dir.check_model_flag("efficientnetv2-zz", run_config)


@pytest.mark.slow
def test_export_cli_names_a_missing_run(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "effnetv2_tf.export",
       f"--model_dir={tmp_path}/none", f"--export_dir={tmp_path}/out",
       "--tflite"], capture_output=True, text=True, env=env, timeout=300,
      check=False)
  assert result.returncode == 1
  assert f"--model_dir {tmp_path}/none does not exist" in result.stderr
  assert "Traceback" not in result.stderr
  (tmp_path / "a_file").write_text("kept")
  result = subprocess.run(
      [sys.executable, "-m", "effnetv2_tf.export",
       f"--model_dir={tmp_path}/none", f"--export_dir={tmp_path}/a_file"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert result.returncode == 1
  assert f"--export_dir {tmp_path}/a_file is a file" in result.stderr
  assert "Traceback" not in result.stderr
  assert (tmp_path / "a_file").read_text() == "kept"
  # Another model's export: refused before the run is read.
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "saved_model.pb").write_text("kept")
  result = subprocess.run(
      [sys.executable, "-m", "effnetv2_tf.export",
       f"--model_dir={tmp_path}/none", f"--export_dir={tmp_path}/other"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert result.returncode == 1
  assert result.stderr == (
      f"export: error: --export_dir {tmp_path}/other already holds a "
      "SavedModel; pass --overwrite to replace the directory (any non-empty "
      "one needs it), or give a new or empty one.\n")
  assert (tmp_path / "other" / "saved_model.pb").read_text() == "kept"


@pytest.mark.slow
def test_export_cli_of_a_run_is_quiet_and_keeps_its_model(tmp_path):
  config = config_lib.build_config("efficientnetv2-b0", "smoke")
  model = run_dir.model_from_config(config.model, 10, 0.1)
  tf.train.Checkpoint(model=model, ema=ema_lib.ExponentialMovingAverage(
      model, 0.9)).save(str(tmp_path / "ckpt"))
  config_lib.save_config(config, str(tmp_path))
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")

  def export_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "effnetv2_tf.export", f"--model_dir={tmp_path}",
         f"--export_dir={tmp_path}/out", *args], capture_output=True,
        text=True, env=env, timeout=300, check=False)

  other = export_cli("--model=efficientnetv2-b1")
  assert other.returncode == 1
  assert other.stderr == (
      "export: error: --model efficientnetv2-b1 differs from the run's model "
      "efficientnetv2-b0 (config.json); drop --model.\n")
  assert not (tmp_path / "out").exists()
  result = export_cli()
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith("Exporting efficientnetv2-b0 (") and (
      lines[0].endswith("EMA weights) at 24 px"))  # smoke's eval size
  assert lines[-1] == f"Wrote {tmp_path}/out"
  # absl's INFO lines (ours, TensorFlow's saver) only with --verbosity.
  assert not [l for l in result.stderr.splitlines() if l.startswith("I")]
  (tmp_path / "out" / "stale.txt").write_text("an older export's")
  again = export_cli()
  assert again.returncode == 1
  assert again.stderr.endswith(" pass --overwrite to replace the directory "
                               "(any non-empty one needs it), or give a new "
                               "or empty one.\n")
  assert len(again.stderr.splitlines()) == 1
  replaced = export_cli("--overwrite")
  assert replaced.returncode == 0, replaced.stderr[-2000:]
  assert (tmp_path / "out" / "saved_model.pb").exists()
  assert not (tmp_path / "out" / "stale.txt").exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".out.")]



def _tree(path):
  """{relative path: bytes} of every file under `path`."""
  return {str(p.relative_to(path)): p.read_bytes()
          for p in pathlib.Path(path).rglob("*") if p.is_file()}


def test_an_export_dir_that_holds_anything_needs_overwrite(tmp_path):
  export.check_export_dir(str(tmp_path / "new"), False, "--export_dir")
  (tmp_path / "empty").mkdir()
  export.check_export_dir(str(tmp_path / "empty"), False, "--export_dir")
  notes = tmp_path / "notes"
  notes.mkdir()
  for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
    (notes / name).write_text(name)
  with pytest.raises(export.ExportDirError) as err:
    export.check_export_dir(str(notes), False, "--export_dir")
  assert str(err.value) == (
      f"--export_dir {notes} already holds a.txt, b.txt, c.txt and 1 more; "
      "pass --overwrite to replace the directory (any non-empty one needs "
      "it), or give a new or empty one.")
  export.check_export_dir(str(notes), True, "--export_dir")
  (notes / "saved_model.pb").write_bytes(b"")
  with pytest.raises(export.ExportDirError,
                     match=r"--feature_vector_dir .* holds a SavedModel; "
                     "pass --overwrite_export "):
    export.check_export_dir(str(notes), False, "--feature_vector_dir",
                            "--overwrite_export")
  with pytest.raises(export.ExportDirError, match="a.txt is a file"):
    export.check_export_dir(str(notes / "a.txt"), True, "--export_dir")
  for root in ("/", "gs://bucket/"):
    with pytest.raises(export.ExportDirError, match="is the root of a"):
      export.check_export_dir(root, True, "--export_dir")


def test_a_staged_export_appears_whole_in_a_new_or_empty_dir(tmp_path):
  for name in ("new", "empty"):
    (tmp_path / "empty").mkdir(exist_ok=True)
    with export.staged_dir(str(tmp_path / name)) as staging:
      assert os.path.basename(staging) == f".{name}.tmp-{os.getpid()}"
      assert os.path.dirname(staging) == str(tmp_path)
      (pathlib.Path(staging) / "saved_model.pb").write_bytes(b"new")
      assert not (tmp_path / name / "saved_model.pb").exists()  # not yet
    assert _tree(tmp_path / name) == {"saved_model.pb": b"new"}
  assert sorted(os.listdir(tmp_path)) == ["empty", "new"]  # no temp left
  # Through a link: the export replaces the directory it points at.
  (tmp_path / "link").symlink_to(tmp_path / "new")
  with export.staged_dir(str(tmp_path / "link"), overwrite=True) as staging:
    (pathlib.Path(staging) / "saved_model.pb").write_bytes(b"newer")
  assert (tmp_path / "link").is_symlink()
  assert _tree(tmp_path / "new") == {"saved_model.pb": b"newer"}
  assert sorted(os.listdir(tmp_path)) == ["empty", "link", "new"]


def test_an_interrupted_replace_puts_the_old_export_back(tmp_path,
                                                         monkeypatch):
  out = tmp_path / "out"
  (out / "variables").mkdir(parents=True)
  (out / "saved_model.pb").write_bytes(b"old")
  (out / "variables" / "v").write_bytes(b"old weights")
  before = _tree(out)
  real_rename, calls = tf.io.gfile.rename, []

  def rename(src, dst, overwrite=False):
    calls.append(os.path.basename(dst))
    if len(calls) == 2:  # the new export into place, after the old aside
      raise KeyboardInterrupt
    real_rename(src, dst, overwrite)

  monkeypatch.setattr(tf.io.gfile, "rename", rename)
  with pytest.raises(KeyboardInterrupt):
    with export.staged_dir(str(out), overwrite=True) as staging:
      (pathlib.Path(staging) / "saved_model.pb").write_bytes(b"new")
  assert calls == [f".out.old-{os.getpid()}", "out", "out"]
  assert _tree(out) == before
  assert os.listdir(tmp_path) == ["out"]


def test_an_export_interrupted_midway_leaves_the_old_one(exported, tmp_path,
                                                         monkeypatch):
  model, path = exported
  out = tmp_path / "export"
  shutil.copytree(path, out)
  before = _tree(out)

  def save_half(obj, export_dir, *args, **kwargs):
    del obj, args, kwargs  # a save killed after its first file
    tf.io.gfile.makedirs(export_dir)
    (pathlib.Path(export_dir) / "saved_model.pb").write_bytes(b"half")
    raise KeyboardInterrupt

  monkeypatch.setattr(tf.saved_model, "save", save_half)
  with pytest.raises(KeyboardInterrupt):
    export.export_saved_model(model, str(out), SIZE, PREP, overwrite=True)
  assert _tree(out) == before
  assert os.listdir(tmp_path) == ["export"]  # no temp directory behind


@pytest.mark.slow
def test_an_export_replaces_another_whole_only_with_overwrite(exported,
                                                              tmp_path):
  _, path = exported
  out = tmp_path / "export"
  shutil.copytree(path, out)
  (out / export.TFLITE_FILENAME).write_bytes(b"the old model's")
  before = _tree(out)
  keras.utils.set_random_seed(8)
  other = tiny_model(num_classes=3)
  with pytest.raises(export.ExportDirError) as err:
    export.export_saved_model(other, str(out), SIZE, PREP,
                              class_names=["a", "b", "c"])
  assert str(err.value) == (
      f"export_dir {out} already holds a SavedModel; pass overwrite=True to "
      "replace the directory (any non-empty one needs it), or give a new or "
      "empty one.")
  assert _tree(out) == before
  export.export_saved_model(other, str(out), SIZE, PREP,
                            class_names=["a", "b", "c"], overwrite=True)
  assert not (out / export.TFLITE_FILENAME).exists()  # none of the old left
  assert (out / "labels.txt").read_text() == "a\ta\nb\tb\nc\tc\n"
  images = np.random.default_rng(5).normal(size=(2, SIZE, SIZE, 3)).astype(
      np.float32)
  got = tf.saved_model.load(str(out)).signatures["preprocessed"](
      images=tf.constant(images))["probabilities"].numpy()
  np.testing.assert_allclose(got, _softmax(other, images), atol=1e-5)
  assert os.listdir(tmp_path) == ["export"]
