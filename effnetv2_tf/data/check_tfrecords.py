"""Names the records of an ImageNet-format TFRecord set that do not decode.

  python -m effnetv2_tf.data.check_tfrecords --data_dir=/data/imagenet
  python -m effnetv2_tf.data.check_tfrecords --data_dir=D --split=validation

Training skips such records and counts them ("skipped N" on the progress
lines; tf.data logs each error, without naming the record). This tool reads
the shards once, decodes every image as the pipeline does (in parallel),
and prints each unreadable record as `shard#index (image/filename)`, then
the count. Exit status 1 when any is found.
"""

from effnetv2_tf import startup

# Run as a program, start up before the imports below load TensorFlow
# (see startup); imported as a module, this changes nothing.
if __name__ == "__main__":
  startup.start()

# pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys

from absl import app
from absl import flags
import tensorflow as tf

from effnetv2_tf import errors
from effnetv2_tf import quiet_start
from effnetv2_tf.data import tfrecord_format

SPLITS = ("train", "validation")


def _records(files):
  """(shard, index in shard, record) of every record, in file order."""
  return tf.data.Dataset.from_tensor_slices(files).flat_map(
      lambda f: tf.data.TFRecordDataset(f).enumerate().map(
          lambda i, r: (f, i, r)))


def _encoded(record):
  """The image bytes, as training reads them (`sources._parse_record`)."""
  return tfrecord_format.image_bytes(
      tf.io.parse_single_example(record, tfrecord_format.image_spec()))


def _filename(record):
  try:
    example = tf.train.Example.FromString(record)
    values = example.features.feature[tfrecord_format.FILENAME_KEY]
    return values.bytes_list.value[0].decode("utf-8", "replace")
  except Exception:  # pylint: disable=broad-except  (a corrupt record)
    return ""


def unreadable_records(files, every=50000, echo=print):
  """(records checked, [(shard, index, image/filename or "")]) of the
  records in `files` that do not parse or decode; `echo` gets a progress
  line every `every` records."""
  def decodes(position, item):
    image = tf.io.decode_image(_encoded(item[2]), channels=3,
                               expand_animations=False)
    return position, tf.shape(image)[0]

  # Survivors come in order (deterministic map): a gap in their positions
  # is an unreadable record.
  checked = _records(files).enumerate().map(
      decodes, num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True).ignore_errors()
  missing, last, report = set(), -1, every
  for position, _ in checked.as_numpy_iterator():
    missing.update(range(last + 1, int(position)))
    last = int(position)
    if every and last + 1 >= report:
      echo(f"checked {last + 1} records, {len(missing)} unreadable")
      report = (last + 1) // every * every + every
  bad, total = [], 0
  for position, (shard, index, record) in enumerate(
      _records(files).as_numpy_iterator()):
    total = position + 1
    if position in missing or position > last:
      bad.append((shard.decode(), int(index), _filename(record)))
  return total, bad


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("data_dir", None, "Folder of train-*/validation-* "
                      "shards.")
  flags.DEFINE_enum("split", None, SPLITS, "One split (default: both).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  quiet_start.quiet_info_logs(FLAGS)
  if not FLAGS.data_dir:
    raise app.UsageError("Give --data_dir.")
  found = 0
  for split in [FLAGS.split] if FLAGS.split else SPLITS:
    # The files training reads (sources.tfrecord_source).
    files = sorted(tf.io.gfile.glob(os.path.join(FLAGS.data_dir,
                                                 f"{split}-*")))
    if not files:
      if FLAGS.split:
        errors.fail("check_tfrecords",
                    f"no {split}-* shards in {FLAGS.data_dir}.")
      continue
    total, bad = unreadable_records(files)
    for shard, index, filename in bad:
      print(f"{shard}#{index}" + (f" ({filename})" if filename else ""))
    print(f"{split}: {len(bad)} of {total} records unreadable "
          f"({len(files)} shards).", flush=True)
    found += len(bad)
  sys.exit(1 if found else 0)


if __name__ == "__main__":
  define_flags()
  app.run(main)
