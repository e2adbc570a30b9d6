"""Two workers on 127.0.0.1 train one model with MultiWorkerMirroredStrategy.

Each worker is its own process with its own TF_CONFIG, as on real hosts;
they meet over gRPC on two free local ports.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

# On the smoke config (configs/datasets.py): 6 steps, 2 stages, batch 16.
HPARAMS = "train.steps=6,runtime.steps_per_loop=3"

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _run_workers(driver, model_dir, hparams, *flags):
  """Runs 2 worker processes to the end; returns [(code, stdout, stderr)].

  Output goes to files: with pipes, one worker blocked on a full pipe would
  stall the other in its next all-reduce.
  """
  cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
  logs = model_dir.parent / "logs"
  logs.mkdir(exist_ok=True)
  workers = []
  for index in range(2):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {
                   "type": "worker", "index": index}}))
    with open(logs / f"{index}.out", "w") as out, open(
        logs / f"{index}.err", "w") as err:
      workers.append(subprocess.Popen(
          [sys.executable, str(ROOT / driver), "--model=efficientnetv2-b0",
           "--dataset_cfg=smoke", "--strategy=multi_worker",
           f"--model_dir={model_dir}", f"--hparam_str={hparams}", *flags],
          env=env, stdout=out, stderr=err))
  try:
    codes = [worker.wait(timeout=600) for worker in workers]
  finally:
    for worker in workers:
      worker.kill()
  return [(code, (logs / f"{i}.out").read_text(),
           (logs / f"{i}.err").read_text()) for i, code in enumerate(codes)]


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["main.py", "main_tf2.py"])
def test_two_workers_train_and_only_the_chief_writes(tmp_path, driver):
  model_dir, export_dir = tmp_path / "run", tmp_path / "export"
  results = _run_workers(driver, model_dir, HPARAMS, "--mode=train_and_eval",
                         f"--export_dir={export_dir}")
  for code, _, stderr in results:
    assert code == 0, stderr[-3000:]
  outputs = [stdout for _, stdout, _ in results]
  for stdout in outputs:
    # 2 workers x 1 CPU = 2 replicas of one global batch of 16.
    assert "at batch 16, 2 stages" in stdout
    # The replicas' collectives run on one step traced for both sizes.
    assert "one trace for every stage size" in stdout
    # Eval shards the 360 test images between the workers and sums.
    assert "(24 px, 360 images" in stdout
  summary = json.loads((model_dir / "summary.json").read_text())
  assert summary["final_step"] == 6
  assert [s["stage"] for s in summary["stages"]] == [1, 2]
  # Both workers report the same all-reduced eval.
  evals = [line.split("): ")[1] for stdout in outputs
           for line in stdout.splitlines() if line.startswith("eval at step 6")]
  assert len(evals) == 2 and evals[0] == evals[1]
  assert tf.train.latest_checkpoint(str(model_dir)).endswith("-6")
  # The chief (worker 0) alone writes; worker 1's scratch checkpoints are
  # removed at the end.
  assert [p.name for p in model_dir.iterdir() if p.is_dir()] == ["train"]
  assert (export_dir / "saved_model.pb").exists()


@pytest.mark.slow
def test_batch_not_divisible_by_the_replicas_is_one_line(tmp_path):
  hparams = HPARAMS + ",train.batch_size=15"
  for code, _, stderr in _run_workers("main.py", tmp_path / "run", hparams,
                                      "--mode=train"):
    assert code == 1
    assert stderr.strip().splitlines()[-1] == (
        "main.py: error: train.batch_size=15 is not divisible by the 2 "
        "replicas.")
