"""One writer per run directory (effnetv2_tf/runs/lock.py): the lock file,
a second writer refused, a dead holder's lock taken over; and the same
through main.py processes."""

import datetime
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import time
import types

import pytest
import tensorflow as tf

from effnetv2_tf import config as config_lib
from effnetv2_tf import driver
from effnetv2_tf import errors
from effnetv2_tf.runs import lock
from effnetv2_tf.training import reporter as reporter_lib
from conftest import driver_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


def _today_at(hour, minute):
  """ISO time of today's hour:minute, local time zone."""
  return datetime.datetime.now().astimezone().replace(
      hour=hour, minute=minute, second=0, microsecond=0).isoformat()


def _write_lock(directory, **fields):
  """A lock file as another run would leave it; returns its dict."""
  holder = {"host": HOST, "pid": 1, "process": None,
            "started": _today_at(5, 30), "command": "main.py --mode=train",
            "token": "theirs", **fields}
  directory.mkdir(parents=True, exist_ok=True)
  (directory / ".lock").write_text(json.dumps(holder))
  return holder


def _dead_pid():
  """The pid of a process that has ended."""
  child = subprocess.Popen(["true"])
  child.wait()
  return child.pid


@pytest.fixture(name="sleeper")
def _sleeper():
  """A live process of this host (not this one)."""
  child = subprocess.Popen(["sleep", "60"])
  yield child
  child.kill()
  child.wait()


def test_the_lock_file_names_this_process_and_goes_on_release(tmp_path):
  before = datetime.datetime.now().astimezone().replace(microsecond=0)
  held = lock.acquire(str(tmp_path))
  content = json.loads((tmp_path / ".lock").read_text())
  assert content["host"] == HOST
  assert content["pid"] == os.getpid()
  assert content["command"] == shlex.join(sys.argv)
  started = datetime.datetime.fromisoformat(content["started"])
  assert before <= started <= datetime.datetime.now().astimezone()
  held.release()
  assert not (tmp_path / ".lock").exists()
  assert tmp_path.is_dir()  # it was there before: kept


def test_a_directory_made_for_the_lock_goes_when_left_empty(tmp_path):
  with lock.hold(str(tmp_path / "a" / "run")):
    assert (tmp_path / "a" / "run" / ".lock").is_file()
  assert list(tmp_path.iterdir()) == []  # nothing written, not even it
  with lock.hold(str(tmp_path / "b" / "run")):
    (tmp_path / "b" / "run" / "config.json").write_text("{}")
  assert [p.name for p in (tmp_path / "b" / "run").iterdir()] == [
      "config.json"]


def test_an_error_in_the_block_releases(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with lock.hold(str(tmp_path)):
      raise KeyboardInterrupt
  with pytest.raises(SystemExit):
    with lock.hold(str(tmp_path)):
      sys.exit(143)
  assert not (tmp_path / ".lock").exists()


def test_a_second_writer_is_one_line_naming_the_holder(tmp_path, sleeper):
  _write_lock(tmp_path, pid=sleeper.pid,
              process=lock._process_identity(sleeper.pid))
  with pytest.raises(lock.RunDirLockedError) as raised:
    lock.acquire(str(tmp_path), "--model_dir")
  assert str(raised.value) == (
      f"--model_dir {tmp_path} is in use by pid {sleeper.pid} on host "
      f"{HOST} since 05:30 (main.py); wait for it or use another "
      "--model_dir.")
  assert isinstance(raised.value, errors.UserError)
  assert json.loads((tmp_path / ".lock").read_text())["token"] == "theirs"


def test_the_holder_started_on_another_day_shows_the_date(
    tmp_path, sleeper, monkeypatch):
  monkeypatch.setenv("TZ", "UTC")
  time.tzset()
  try:
    _write_lock(tmp_path, pid=sleeper.pid,
                started="2024-01-02T07:30:00+02:00")
    with pytest.raises(lock.RunDirLockedError,
                       match=" since 2024-01-02 05:30 "):
      lock.acquire(str(tmp_path))
  finally:
    monkeypatch.delenv("TZ")
    time.tzset()


def test_this_process_holding_it_is_refused_too(tmp_path):
  with lock.hold(str(tmp_path)):
    with pytest.raises(lock.RunDirLockedError,
                       match=f"in use by pid {os.getpid()} on host"):
      lock.acquire(str(tmp_path))
    assert (tmp_path / ".lock").exists()  # still the first one's
  assert not (tmp_path / ".lock").exists()


def test_a_dead_process_lock_is_taken_over_with_one_line(tmp_path):
  pid = _dead_pid()
  _write_lock(tmp_path, pid=pid, command="/x/main_tf2.py --mode=train")
  said = []
  with lock.hold(str(tmp_path), "--model_dir", said.append):
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  assert said == [f"--model_dir {tmp_path}: took over the lock of pid {pid} "
                  "(main_tf2.py, since 05:30), which is no longer running."]
  assert sorted(os.listdir(tmp_path)) == []  # nothing set aside is left


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"),
                    reason="process start times from /proc")
def test_a_reused_pid_is_not_the_holder(tmp_path, sleeper):
  # The lock's pid runs, but it is a process started after the holder.
  _write_lock(tmp_path, pid=sleeper.pid, process="another-boot:12")
  said = []
  with lock.hold(str(tmp_path), note=said.append):
    pass
  assert len(said) == 1 and f"lock of pid {sleeper.pid}" in said[0]


def test_another_host_lock_is_refused_naming_the_file(tmp_path):
  _write_lock(tmp_path, host="tpu-vm-7", pid=os.getpid())
  with pytest.raises(lock.RunDirLockedError) as raised:
    lock.acquire(str(tmp_path))
  assert str(raised.value) == (
      f"--model_dir {tmp_path} is in use by pid {os.getpid()} on host "
      "tpu-vm-7 since 05:30 (main.py); wait for it or use another "
      "--model_dir; this host cannot tell whether it still runs: if not, "
      f"delete {tmp_path}/.lock.")
  assert json.loads((tmp_path / ".lock").read_text())["host"] == "tpu-vm-7"


def test_a_lock_file_that_names_no_holder_is_refused(tmp_path):
  (tmp_path / ".lock").write_text("")
  with pytest.raises(lock.RunDirLockedError,
                     match="which does not say by whom; if no run writes "
                     "there, delete it"):
    lock.acquire(str(tmp_path))


def test_release_leaves_a_lock_that_is_no_longer_this_runs(tmp_path):
  held = lock.acquire(str(tmp_path))
  _write_lock(tmp_path, token="successor")  # deleted by hand, then retaken
  held.release()
  assert json.loads((tmp_path / ".lock").read_text())["token"] == "successor"


def test_a_takeover_leaves_a_lock_that_changed_meanwhile(tmp_path):
  stale = _write_lock(tmp_path, pid=_dead_pid())
  fresh = _write_lock(tmp_path, pid=os.getpid(), token="successor")
  assert not lock._take_over(str(tmp_path / ".lock"), stale)
  assert json.loads((tmp_path / ".lock").read_text()) == fresh
  assert os.listdir(tmp_path) == [".lock"]


def test_a_bucket_path_is_locked_through_gfile(tmp_path):
  # ram:// goes through tf.io.gfile as gs:// does (no exclusive create).
  directory = f"ram://{tmp_path.name}/run"
  with lock.hold(directory):
    with tf.io.gfile.GFile(f"{directory}/.lock") as f:
      assert json.loads(f.read())["pid"] == os.getpid()
    with pytest.raises(lock.RunDirLockedError,
                       match=f"--model_dir {directory} is in use by pid "
                       f"{os.getpid()} on host "):
      lock.acquire(directory)
  assert not tf.io.gfile.exists(f"{directory}/.lock")


# Real processes: main.py on the smoke config (configs/datasets.py), two
# stages of 10 steps, checkpoints at each stage's end.
HPARAMS = "train.steps=20,runtime.steps_per_loop=5"


def _command(model_dir, *extra):
  return [sys.executable, str(ROOT / "main.py"), "--model=efficientnetv2-b0",
          "--dataset_cfg=smoke", f"--model_dir={model_dir}",
          f"--hparam_str={HPARAMS}", *extra]


def _run(command, fault=None):
  return subprocess.run(command, env=driver_env(fault), capture_output=True,
                        text=True, timeout=600, check=False)


def test_a_locked_run_refuses_a_second_writer_and_lets_an_eval_read(
    tmp_path):
  # In process, the drivers' directory checks (driver._check_directories)
  # while another run holds the lock: what the slow test below checks
  # with real main.py processes.
  model_dir = tmp_path / "run"
  config_lib.save_config(
      config_lib.build_config("efficientnetv2-b0", "smoke"), str(model_dir))

  def values(mode):
    return types.SimpleNamespace(
        mode=mode, init_checkpoint=None, export_dir=None,
        overwrite_export=False, strategy="default")

  with lock.hold(str(model_dir), "--model_dir"):  # the training run's
    holder = json.loads((model_dir / ".lock").read_text())
    with pytest.raises(lock.RunDirLockedError,
                       match=f"^--model_dir {model_dir} is in use by pid "
                       f"{os.getpid()} on host "):
      with driver._check_directories(  # pylint: disable=protected-access
          values("train"), str(model_dir), reporter_lib.Recorder()):
        pass
    with driver._check_directories(  # pylint: disable=protected-access
        values("eval"), str(model_dir), reporter_lib.Recorder()) as reads:
      assert reads  # no lock taken: the eval only reads the run
    assert json.loads((model_dir / ".lock").read_text()) == holder
  assert not (model_dir / ".lock").exists()


# Slow: three main.py processes, one training. The quick suite checks the
# lock's lines in process (above) and test_run_dir_init the directory
# checks of a run and of an eval that only reads.
@pytest.mark.slow
def test_a_second_main_py_is_refused_while_eval_reads(tmp_path):
  model_dir = tmp_path / "run"
  first = subprocess.Popen(_command(model_dir, "--mode=train"), env=driver_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    # Hold the first still once it has a checkpoint (and the lock), so the
    # others certainly meet it running, however slow this machine is.
    deadline = time.time() + 300
    while (tf.train.latest_checkpoint(str(model_dir)) is None
           and first.poll() is None and time.time() < deadline):
      time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)
    assert first.poll() is None, "the first run ended too soon"
    second = _run(_command(model_dir))
    reader = _run([sys.executable, str(ROOT / "main.py"), "--mode=eval",
                   f"--model_dir={model_dir}"])
    holder = json.loads((model_dir / ".lock").read_text())
  finally:
    first.send_signal(signal.SIGCONT)
  out, err = first.communicate(timeout=300)

  assert second.returncode == 1
  assert second.stderr.strip().splitlines() == [
      f"main.py: error: --model_dir {model_dir} is in use by pid "
      f"{first.pid} on host {HOST} since {holder['started'][11:16]} "
      "(main.py); wait for it or use another --model_dir."]
  assert reader.returncode == 0, reader.stderr[-3000:]
  assert "top-1" in reader.stdout
  assert holder["pid"] == first.pid
  assert first.returncode == 0, err[-3000:]
  assert "step 20/20" in out
  assert json.loads((model_dir / "summary.json").read_text())[
      "final_step"] == 20
  assert not (model_dir / ".lock").exists()


@pytest.mark.slow
def test_a_killed_run_lock_is_taken_over_by_the_rerun(tmp_path):
  model_dir = tmp_path / "run"
  killed = _run(_command(model_dir, "--mode=train"),
                fault="kill_after_save@10")
  assert killed.returncode == -signal.SIGKILL
  left = json.loads((model_dir / ".lock").read_text())
  rerun = _run(_command(model_dir, "--mode=train"))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert (f"--model_dir {model_dir}: took over the lock of pid "
          f"{left['pid']} (main.py, since ") in rerun.stdout
  assert "step 10 of 20" in rerun.stdout  # resumed
  assert not (model_dir / ".lock").exists()
